/*
 * tlsnew: new TLS connections per second, one request each, no session
 * resumption — every connection is a full handshake.
 *
 * wrk and h2load resume TLS sessions when they reconnect (tickets or
 * session ids), so "Connection: close" with them measures abbreviated
 * handshakes, and how much depends on each server's ticket/cache defaults.
 * This client never offers a session, so every server does the same work.
 *
 *   tlsnew IP PORT SNI HOST PATH CONNS SECONDS
 *
 * CONNS threads each loop: connect, handshake (SNI, ALPN http/1.1),
 * "GET PATH" with "Connection: close", read to EOF, close. Prints
 * key=value lines: ok (HTTP 200), failed, seconds, rate (ok/s),
 * p50_ms and p99_ms (connect to last byte).
 *
 * Build: cc -O2 -pthread -o tlsnew tlsnew.c -lssl -lcrypto
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_SAMPLES (1 << 20)

static SSL_CTX *ctx;
static struct sockaddr_in addr;
static const char *sni;
static char request[1024];
static double deadline;

struct worker {
    pthread_t tid;
    long ok, failed;
    long n;
    float *lat_ms;
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* One connection, one request. Returns 1 on HTTP 200. */
static int one(void) {
    int ok = 0, fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (fd < 0) return 0;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) { close(fd); return 0; }
    SSL *ssl = SSL_new(ctx);
    SSL_set_tlsext_host_name(ssl, sni);
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) == 1 && SSL_write(ssl, request, (int)strlen(request)) > 0) {
        char buf[16384];
        int n, first = 1;
        while ((n = SSL_read(ssl, buf, sizeof buf)) > 0) {
            if (first) { ok = n >= 12 && memcmp(buf, "HTTP/1.", 7) == 0 && memcmp(buf + 8, " 200", 4) == 0; first = 0; }
        }
    }
    ERR_clear_error();
    SSL_free(ssl);
    close(fd);
    return ok;
}

static void *run(void *arg) {
    struct worker *w = arg;
    while (now() < deadline) {
        double t0 = now();
        if (one()) {
            w->ok++;
            if (w->n < MAX_SAMPLES) w->lat_ms[w->n++] = (float)((now() - t0) * 1e3);
        } else {
            w->failed++;
        }
    }
    return NULL;
}

static int cmp(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: tlsnew IP PORT SNI HOST PATH CONNS SECONDS\n");
        return 2;
    }
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) { fprintf(stderr, "tlsnew: bad IP %s\n", argv[1]); return 2; }
    sni = argv[3];
    snprintf(request, sizeof request, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", argv[5], argv[4]);
    int conns = atoi(argv[6]);
    double secs = atof(argv[7]);
    if (conns < 1 || conns > 256 || secs <= 0) { fprintf(stderr, "tlsnew: bad CONNS or SECONDS\n"); return 2; }

    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn - 1);

    struct worker *ws = calloc((size_t)conns, sizeof *ws);
    double start = now();
    deadline = start + secs;
    for (int i = 0; i < conns; i++) {
        ws[i].lat_ms = malloc(sizeof(float) * MAX_SAMPLES);
        pthread_create(&ws[i].tid, NULL, run, &ws[i]);
    }
    long ok = 0, failed = 0, n = 0;
    for (int i = 0; i < conns; i++) {
        pthread_join(ws[i].tid, NULL);
        ok += ws[i].ok; failed += ws[i].failed; n += ws[i].n;
    }
    double elapsed = now() - start;
    float *all = malloc(sizeof(float) * (size_t)(n ? n : 1));
    for (int i = 0, k = 0; i < conns; k += (int)ws[i].n, i++) memcpy(all + k, ws[i].lat_ms, sizeof(float) * (size_t)ws[i].n);
    qsort(all, (size_t)n, sizeof(float), cmp);
    printf("ok=%ld\nfailed=%ld\nseconds=%.3f\nrate=%.0f\n", ok, failed, elapsed, ok / elapsed);
    if (n) {
        long i50 = (long)(0.50 * n + 0.999999) - 1, i99 = (long)(0.99 * n + 0.999999) - 1;
        printf("p50_ms=%.3f\np99_ms=%.3f\n", all[i50 < 0 ? 0 : i50], all[i99 < 0 ? 0 : i99]);
    }
    return ok > 0 ? 0 : 1;
}
