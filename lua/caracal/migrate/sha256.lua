--- SHA-256 in pure Lua 5.4 (FIPS 180-4), for migration checksums.
--
-- Lua 5.4's 64-bit integers and bit operators make this short and fast
-- enough for scripts of a few hundred kilobytes. It is a stopgap: when the
-- crypto issue lands a C version (OpenSSL, already linked) replaces it
-- behind the same `hex(s)` function.
--
--    require("caracal.migrate.sha256").hex("abc")
--    --> "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
-- @module caracal.migrate.sha256
local M = {}

local K = {
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
}

local MASK = 0xffffffff

-- 32-bit rotate right; values are kept in 0..2^32-1.
local function ror(x, n)
  return ((x >> n) | (x << (32 - n))) & MASK
end

--- The SHA-256 digest of a string, as 64 lowercase hex digits.
-- @tparam string s
-- @treturn string
function M.hex(s)
  local h0, h1, h2, h3 = 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a
  local h4, h5, h6, h7 = 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19
  -- Padding: 0x80, zeros to 56 mod 64, then the bit length big-endian.
  local len = #s
  local pad = 64 - ((len + 9) % 64)
  if pad == 64 then pad = 0 end
  s = s .. "\128" .. string.rep("\0", pad) .. string.pack(">I8", len * 8)
  local w = {}
  for chunk = 1, #s, 64 do
    for i = 1, 16 do
      w[i] = string.unpack(">I4", s, chunk + (i - 1) * 4)
    end
    for i = 17, 64 do
      local a, b = w[i - 15], w[i - 2]
      local s0 = ror(a, 7) ~ ror(a, 18) ~ (a >> 3)
      local s1 = ror(b, 17) ~ ror(b, 19) ~ (b >> 10)
      w[i] = (w[i - 16] + s0 + w[i - 7] + s1) & MASK
    end
    local a, b, c, d, e, f, g, h = h0, h1, h2, h3, h4, h5, h6, h7
    for i = 1, 64 do
      local S1 = ror(e, 6) ~ ror(e, 11) ~ ror(e, 25)
      local ch = (e & f) ~ (~e & g)
      local t1 = (h + S1 + ch + K[i] + w[i]) & MASK
      local S0 = ror(a, 2) ~ ror(a, 13) ~ ror(a, 22)
      local maj = (a & b) ~ (a & c) ~ (b & c)
      local t2 = (S0 + maj) & MASK
      h, g, f, e = g, f, e, (d + t1) & MASK
      d, c, b, a = c, b, a, (t1 + t2) & MASK
    end
    h0, h1, h2, h3 = (h0 + a) & MASK, (h1 + b) & MASK, (h2 + c) & MASK, (h3 + d) & MASK
    h4, h5, h6, h7 = (h4 + e) & MASK, (h5 + f) & MASK, (h6 + g) & MASK, (h7 + h) & MASK
  end
  return string.format("%08x%08x%08x%08x%08x%08x%08x%08x", h0, h1, h2, h3, h4, h5, h6, h7)
end

return M
