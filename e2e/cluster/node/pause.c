/* The pod sandbox ("pause") process of the e2e real node: holds the pod's namespaces, reaps zombies,
 * exits on SIGINT/SIGTERM. Built with `gcc -static` and packed as an image by node-lib.sh. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) { (void)sig; _exit(0); }
static void on_chld(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }

int main(void) {
  struct sigaction term = {.sa_handler = on_term}, chld = {.sa_handler = on_chld, .sa_flags = SA_NOCLDSTOP};
  sigaction(SIGINT, &term, 0);
  sigaction(SIGTERM, &term, 0);
  sigaction(SIGCHLD, &chld, 0);
  for (;;) pause();
}
