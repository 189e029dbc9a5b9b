/* The real node's pod sandbox ("pause") image: no registry is reachable, so it is built here
 * (hack/build-test-images.sh). It holds the pod's namespaces open, reaps children (PID 1 of a
 * shared PID namespace) and exits on SIGTERM/SIGINT. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }

int main(void) {
  struct sigaction term = {0};
  term.sa_handler = stop;
  sigaction(SIGINT, &term, NULL);
  sigaction(SIGTERM, &term, NULL);
  struct sigaction chld = {0};
  chld.sa_handler = reap;
  chld.sa_flags = SA_NOCLDSTOP;
  sigaction(SIGCHLD, &chld, NULL);
  for (;;) pause();
}
