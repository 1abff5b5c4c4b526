/*
 * pause: the sandbox ("infra") process of a Kubernetes pod, written for nodeimage's
 * test images. It holds the pod's namespaces open and does nothing else:
 *   - never exits on its own (a sandbox whose process exits is NotReady);
 *   - SIGINT and SIGTERM end it with status 0 (as PID 1 a signal without a
 *     handler is ignored, so the handlers are what makes it stoppable);
 *   - SIGCHLD reaps every exited child (it is PID 1 of the pod's PID namespace
 *     when the pod shares one, so orphans are re-parented to it);
 *   - `-v` prints the version and exits.
 * Built static (`cc -Os -static`): the image holds this one file.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef PAUSE_VERSION
#define PAUSE_VERSION "unknown"
#endif

static void on_stop(int sig)
{
    /* write(2) is async-signal-safe; printf is not. */
    const char *name = sig == SIGINT ? "SIGINT" : "SIGTERM";
    char msg[64];
    size_t n = 0;
    const char *prefix = "pause: ";
    const char *suffix = ", exiting\n";
    for (const char *p = prefix; *p; p++) msg[n++] = *p;
    for (const char *p = name; *p; p++) msg[n++] = *p;
    for (const char *p = suffix; *p && n < sizeof msg; p++) msg[n++] = *p;
    ssize_t ignored = write(STDERR_FILENO, msg, n);
    (void)ignored;
    _exit(0);
}

static void on_child(int sig)
{
    (void)sig;
    int saved = errno;
    while (waitpid(-1, NULL, WNOHANG) > 0)
        ;
    errno = saved;
}

static int install(int sig, void (*handler)(int), int flags)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sa.sa_flags = flags;
    sigemptyset(&sa.sa_mask);
    return sigaction(sig, &sa, NULL);
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-v") == 0) {
            printf("pause version %s (nodeimage test image)\n", PAUSE_VERSION);
            return 0;
        }
    }
    if (getpid() != 1)
        fprintf(stderr, "pause: warning: not running as PID 1\n");
    if (install(SIGINT, on_stop, 0) < 0 || install(SIGTERM, on_stop, 0) < 0 ||
        install(SIGCHLD, on_child, SA_NOCLDSTOP | SA_RESTART) < 0) {
        perror("pause: sigaction");
        return 1;
    }
    for (;;)
        pause();
    /* not reached */
    return 42;
}
