/* A stand-in for a web server, for e2e/tests/containers.rs: it owns the files it would serve
 * (/srv/html) and does nothing but wait. `web tamper FILE` first overwrites FILE: a replica that
 * starts tampered. SIGTERM ends it (PID 1 ignores signals without a handler). */
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

static void stop(int sig) {
  (void)sig;
  _exit(0);
}

int main(int argc, char **argv) {
  signal(SIGTERM, stop);
  signal(SIGINT, stop);
  if (argc > 2 && strcmp(argv[1], "tamper") == 0) {
    static const char text[] = "tampered at start\n";
    int fd = open(argv[2], O_WRONLY | O_TRUNC | O_CREAT, 0644);
    if (fd >= 0) {
      (void)!write(fd, text, sizeof text - 1);
      close(fd);
    }
  }
  for (;;)
    pause();
}
