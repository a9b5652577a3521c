/*
 * proxy.c: a loopback TCP proxy between Caracal and PostgreSQL that a
 * test can tell to misbehave, for faults a real network produces but a
 * test cannot time: a connection lost during COMMIT, a path that goes
 * silent, a connect that hangs, every connection reset at once.
 *
 *   proxy TARGET_PORT CONTROL_FILE [MAX_SECONDS]
 *
 * Listens on 127.0.0.1 (an ephemeral port, printed as "port N" on stdout)
 * and forwards each connection to 127.0.0.1:TARGET_PORT. Nothing leaves
 * the loopback interface. It exits by itself after MAX_SECONDS (default
 * 600), so a test that dies cannot leave it running for long.
 *
 * The control file holds one line, "MODE [anything]"; it is re-read every
 * 20 ms, and a change of content arms the one-shot modes again:
 *
 *   pass          forward everything (the default)
 *   drop_commit   one-shot: forward the next simple-protocol COMMIT ('Q'
 *                 message) to the server, then cut the client's side at
 *                 once, before any reply: the server commits, the client
 *                 cannot know
 *   eat_commit    one-shot: do not forward the next COMMIT; cut both sides:
 *                 the server never sees it and rolls back
 *   blackhole     forward nothing in either direction (bytes are read and
 *                 discarded): a silent path, as seen by the application
 *   hang          accept new connections but never connect them upstream
 *                 or answer: a connect that hangs
 *   refuse        accept new connections and reset them at once
 *   reset_all     one-shot: reset every open connection (RST)
 *
 * After each event the status file (CONTROL_FILE.status) is rewritten:
 * "triggered N\nconnections M\naccepted K\n".
 *
 * The client-to-server stream is parsed as PostgreSQL's protocol (the
 * untyped SSLRequest / StartupMessage first, then typed messages) only
 * as far as needed to find a 'Q' message whose text starts with COMMIT.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 256

typedef struct Conn {
  int cfd, sfd;          /* client side, server side (-1: closed) */
  int hanging;           /* accepted in "hang" mode: never connected */
  /* client-to-server parser */
  int startup_done;      /* the untyped startup messages are over */
  unsigned char hdr[8];
  int hdr_len;
  uint32_t remaining;    /* body bytes of the current message still to come */
  uint32_t msg_len;      /* the current typed message's size, type byte included */
  unsigned char type;
  char q[16];            /* first bytes of a 'Q' message's text */
  int qlen;
} Conn;

static Conn conns[MAX_CONNS];
static int nconns;
static int target_port;
static char mode[64] = "pass";
static char control_text[256];
static int armed = 1; /* one-shot modes act once per control change */
static long triggered, accepted;
static const char *status_path;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void write_status(void) {
  char tmp[512];
  snprintf(tmp, sizeof tmp, "%s.tmp", status_path);
  FILE *f = fopen(tmp, "w");
  if (!f) return;
  int open_conns = 0;
  for (int i = 0; i < nconns; i++)
    if (conns[i].cfd >= 0 || conns[i].sfd >= 0) open_conns++;
  fprintf(f, "triggered %ld\nconnections %d\naccepted %ld\n", triggered, open_conns, accepted);
  fclose(f);
  rename(tmp, status_path);
}

/* Close with RST (SO_LINGER 0) so the peer sees a reset, not a FIN. */
static void close_rst(int fd) {
  if (fd < 0) return;
  struct linger lg = {1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  close(fd);
}

static void conn_close(Conn *c, int rst) {
  if (rst) {
    close_rst(c->cfd);
    close_rst(c->sfd);
  } else {
    if (c->cfd >= 0) close(c->cfd);
    if (c->sfd >= 0) close(c->sfd);
  }
  c->cfd = c->sfd = -1;
}

static void read_control(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) return;
  char buf[256] = "";
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  if (strcmp(buf, control_text) == 0) return;
  snprintf(control_text, sizeof control_text, "%s", buf);
  char m[64] = "";
  if (sscanf(buf, "%63s", m) != 1) snprintf(m, sizeof m, "pass");
  snprintf(mode, sizeof mode, "%s", m);
  armed = 1;
  if (strcmp(mode, "reset_all") == 0) {
    triggered++;
    armed = 0;
    write_status();
    for (int i = 0; i < nconns; i++) conn_close(&conns[i], 1);
    write_status();
  }
}

static int connect_upstream(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)target_port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static int write_all(int fd, const unsigned char *p, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static int is_commit(const char *q, int len) {
  int i = 0;
  while (i < len && isspace((unsigned char)q[i])) i++;
  return len - i >= 6 && strncasecmp(q + i, "commit", 6) == 0;
}

/*
 * Feed client bytes through the parser. Returns the number of bytes that
 * may be forwarded; *hit is set when a COMMIT 'Q' message ends at that
 * offset (everything up to it included).
 */
static size_t scan_client(Conn *c, const unsigned char *p, size_t n, int *hit) {
  *hit = 0;
  size_t i = 0;
  while (i < n) {
    if (c->remaining > 0) {
      size_t take = n - i < c->remaining ? n - i : c->remaining;
      if (c->type == 'Q') {
        for (size_t k = 0; k < take && c->qlen < (int)sizeof c->q; k++) c->q[c->qlen++] = (char)p[i + k];
      }
      i += take;
      c->remaining -= (uint32_t)take;
      if (c->remaining == 0 && c->type == 'Q' && is_commit(c->q, c->qlen)) {
        *hit = 1;
        return i;
      }
      continue;
    }
    /* a header: untyped (4-byte length) during startup, else type + length */
    int need = c->startup_done ? 5 : 8;
    c->hdr[c->hdr_len++] = p[i++];
    if (c->hdr_len < need) continue;
    if (!c->startup_done) {
      uint32_t len = ((uint32_t)c->hdr[0] << 24) | ((uint32_t)c->hdr[1] << 16) | ((uint32_t)c->hdr[2] << 8) | c->hdr[3];
      uint32_t code = ((uint32_t)c->hdr[4] << 24) | ((uint32_t)c->hdr[5] << 16) | ((uint32_t)c->hdr[6] << 8) | c->hdr[7];
      /* SSLRequest and GSSENCRequest come before the StartupMessage. */
      if (!(code == 80877103u || code == 80877104u)) c->startup_done = 1;
      c->type = 0;
      c->remaining = len >= 8 ? len - 8 : 0;
    } else {
      c->type = c->hdr[0];
      uint32_t len = ((uint32_t)c->hdr[1] << 24) | ((uint32_t)c->hdr[2] << 16) | ((uint32_t)c->hdr[3] << 8) | c->hdr[4];
      c->remaining = len >= 4 ? len - 4 : 0;
      c->msg_len = len + 1;
      c->qlen = 0;
    }
    c->hdr_len = 0;
  }
  return n;
}

static void on_client_data(Conn *c) {
  unsigned char buf[65536];
  ssize_t r = recv(c->cfd, buf, sizeof buf, 0);
  if (r <= 0) {
    conn_close(c, 0);
    return;
  }
  if (c->hanging || strcmp(mode, "blackhole") == 0) return; /* dropped */
  int commit_mode = armed && (strcmp(mode, "drop_commit") == 0 || strcmp(mode, "eat_commit") == 0);
  size_t off = 0;
  while (off < (size_t)r) {
    int hit;
    size_t len = scan_client(c, buf + off, (size_t)r - off, &hit);
    if (hit && commit_mode) {
      /* Count it before cutting anything: the client reads the status as
       * soon as it sees the cut. */
      triggered++;
      armed = 0;
      write_status();
      if (strcmp(mode, "drop_commit") == 0) {
        /* The COMMIT (and what came before it) reaches the server; the
         * client is cut before any reply. The server side stays open
         * until the server answers, so the server does commit. */
        write_all(c->sfd, buf, off + len);
        close_rst(c->cfd);
        c->cfd = -1;
      } else {
        /* Everything before the COMMIT goes; the COMMIT does not (if it
         * began in an earlier read, the server gets half a message and
         * then the reset: it rolls back all the same). */
        size_t end = off + len;
        size_t start = end >= c->msg_len ? end - c->msg_len : 0;
        if (start > 0) write_all(c->sfd, buf, start);
        conn_close(c, 1);
      }
      write_status();
      return;
    }
    off += len;
  }
  if (c->sfd >= 0 && write_all(c->sfd, buf, (size_t)r) != 0) conn_close(c, 0);
}

static void on_server_data(Conn *c) {
  unsigned char buf[65536];
  ssize_t r = recv(c->sfd, buf, sizeof buf, 0);
  if (r <= 0) {
    conn_close(c, 0);
    return;
  }
  if (c->cfd < 0) { /* the client was cut (drop_commit): the reply goes nowhere */
    close(c->sfd);
    c->sfd = -1;
    return;
  }
  if (strcmp(mode, "blackhole") == 0) return;
  if (write_all(c->cfd, buf, (size_t)r) != 0) conn_close(c, 0);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: proxy TARGET_PORT CONTROL_FILE [MAX_SECONDS]\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  target_port = atoi(argv[1]);
  const char *control = argv[2];
  double max_seconds = argc > 3 ? atof(argv[3]) : 600;
  static char sp[512];
  snprintf(sp, sizeof sp, "%s.status", control);
  status_path = sp;

  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  if (bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(lfd, 64) != 0) {
    perror("proxy: bind/listen");
    return 1;
  }
  socklen_t alen = sizeof a;
  getsockname(lfd, (struct sockaddr *)&a, &alen);
  read_control(control);
  write_status();
  printf("port %d\n", ntohs(a.sin_port));
  fflush(stdout);

  double deadline = now_s() + max_seconds;
  struct pollfd pfds[1 + 2 * MAX_CONNS];
  int owner[1 + 2 * MAX_CONNS];
  while (now_s() < deadline) {
    read_control(control);
    /* compact closed connections */
    int w = 0;
    for (int i = 0; i < nconns; i++)
      if (conns[i].cfd >= 0 || conns[i].sfd >= 0) conns[w++] = conns[i];
    nconns = w;
    int n = 0;
    pfds[n].fd = lfd;
    pfds[n].events = POLLIN;
    owner[n++] = -1;
    for (int i = 0; i < nconns; i++) {
      if (conns[i].cfd >= 0) {
        pfds[n].fd = conns[i].cfd;
        pfds[n].events = POLLIN;
        owner[n++] = 2 * i;
      }
      if (conns[i].sfd >= 0) {
        pfds[n].fd = conns[i].sfd;
        pfds[n].events = POLLIN;
        owner[n++] = 2 * i + 1;
      }
    }
    int ready = poll(pfds, (nfds_t)n, 20);
    if (ready < 0) {
      if (errno == EINTR) continue;
      perror("proxy: poll");
      return 1;
    }
    for (int k = 0; k < n; k++) {
      if (!(pfds[k].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      if (owner[k] == -1) {
        int cfd = accept(lfd, NULL, NULL);
        if (cfd < 0) continue;
        accepted++;
        if (strcmp(mode, "refuse") == 0 || nconns >= MAX_CONNS) {
          close_rst(cfd);
          write_status();
          continue;
        }
        Conn *c = &conns[nconns];
        memset(c, 0, sizeof *c);
        c->cfd = cfd;
        c->sfd = -1;
        if (strcmp(mode, "hang") == 0) {
          c->hanging = 1;
        } else if ((c->sfd = connect_upstream()) < 0) {
          close_rst(cfd);
          c->cfd = -1;
          write_status();
          continue;
        }
        nconns++;
        write_status();
        continue;
      }
      Conn *c = &conns[owner[k] / 2];
      if (owner[k] % 2 == 0) {
        if (c->cfd == pfds[k].fd) on_client_data(c);
      } else {
        if (c->sfd == pfds[k].fd) on_server_data(c);
      }
    }
  }
  for (int i = 0; i < nconns; i++) conn_close(&conns[i], 0);
  return 0;
}
