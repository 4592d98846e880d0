/*
 * The first process of a sandboxed run, compiled: the same work as pipeline/sandbox_init.py without a Python
 * interpreter's start-up. Built once per source hash into the cache directory by pipeline/sandbox_helper.py.
 *
 *   sandbox-helper [--unshare FLAGS PARENT] FD UID PID1 TMP_SIZE KEEP CWD NTMP TMPDIR... NHIDE HIDDEN...
 *                  NRL RESOURCE SOFT HARD ... -- ARGV...
 *
 * --unshare: make the run's namespaces ourselves instead of being started under setpriv and unshare(1) (two
 * execs of dynamically linked util-linux tools per run, #16). FLAGS is the unshare(2) mask (CLONE_NEWPID and
 * CLONE_NEWNS required; CLONE_NEWIPC, CLONE_NEWNET as asked), PARENT the pid of the process that started us. We
 * set PR_SET_PDEATHSIG SIGKILL and check PARENT is still our parent (the orphan guard of setpriv --pdeathsig),
 * unshare(FLAGS) and fork. This process then only waits: it blocks SIGINT and SIGTERM and exits the way
 * `unshare --fork` does (the child's exit status; killed by a signal: the same signal, raised on itself). The
 * child, pid 1 of the new PID namespace, sets PR_SET_PDEATHSIG SIGKILL too (unshare --kill-child: if we die,
 * pid 1 dies and the kernel kills the namespace), makes / recursively private, mounts a fresh proc on /proc
 * (unshare --mount-proc) and goes on below as PID1 = 1. When the namespaces cannot be made (EPERM in a
 * container), it says why on stderr and exits 1 without a report.
 *
 * FD: the inherited pipe for the report; UID: the run's uid, or "-" to keep ours; PID1: 1 when we are pid 1 of
 * a PID namespace, 0 otherwise (then we are a child subreaper and kill the program's leftovers); TMP_SIZE, KEEP,
 * CWD: the private tmpfs size, the scratch root to keep visible, the directory to return to after mounting;
 * NTMP directories to mount a private tmpfs on; NHIDE directories the program must not see (the corpus, the
 * results, the cache: where expected outputs are), each covered by an empty tmpfs only root may write; NRL
 * triples of resource number, soft and hard limit.
 *
 * 1. mounts a private, size-capped tmpfs on each TMPDIR and an empty one on each HIDDEN (keeping KEEP visible);
 *    when a HIDDEN cannot be covered, the program is not run (exit status 126, why on stderr, no report);
 * 2. forks; the child resets signal dispositions, sets the rlimits, drops to UID with no supplementary groups
 *    and no_new_privs, and execs ARGV;
 * 3. reaps every process until the program ends and reports its exit status, signal and CPU time as JSON on
 *    FD: {"rl": true, "tmp": null|true|"why not", "rc": N|null, "sig": N|null, "cpu": SECONDS};
 * 4. without a PID namespace, kills whatever the program left behind before exiting.
 *
 * Exit status: 0 when nothing of the run is left (every child reaped), 3 when leftovers could not be reaped in
 * time, 2 on a bad command line.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ORPHAN_SWEEP_SECONDS 2.0
#define EXIT_NOT_FOUND 127
#define EXIT_CANNOT_RUN 126
#define MAX_TMP 16
#define MAX_RL 16

static void die_usage(const char *what) {
    dprintf(2, "sandbox-helper: bad command line (%s)\n", what);
    _exit(2);
}

static long parse_long(const char *text, const char *what) {
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno || *end || end == text) die_usage(what);
    return value;
}

static unsigned long long parse_ull(const char *text, const char *what) {
    char *end;
    errno = 0;
    unsigned long long value = strtoull(text, &end, 10);
    if (errno || *end || end == text) die_usage(what);
    return value;
}

/* "[Errno N] message: 'path'", as Python words an OSError, into buf. */
static void os_error(char *buf, size_t size, int err, const char *path) {
    snprintf(buf, size, "[Errno %d] %s: '%s'", err, strerror(err), path);
}

static int is_real_dir(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* mkdir -p with mode 0711; 0 or an errno. */
static int make_dirs(const char *path) {
    char buf[4096];
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof buf) return ENAMETOOLONG;
    memcpy(buf, path, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (buf[i] == '/' || buf[i] == '\0') {
            char saved = buf[i];
            buf[i] = '\0';
            if (mkdir(buf, 0711) != 0 && errno != EEXIST) return errno;
            buf[i] = saved;
        }
    }
    return 0;
}

/* Mount the private tmpfs and cover the hidden directories; NULL on success, else why not (everything mounted so
 * far is undone). */
static const char *private_tmp(char **dirs, int ndirs, char **hidden, int nhidden, const char *keep,
                               unsigned long long size, const char *cwd, char *why, size_t why_size) {
    const char *done[2 * MAX_TMP + 1];
    int ndone = 0;
    char data[64], source[64];
    int keep_fd = open(keep, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (keep_fd < 0) {
        os_error(why, why_size, errno, keep);
        return why;
    }
    snprintf(data, sizeof data, "size=%llu,mode=1777", size);
    for (int i = 0; i < ndirs; i++) {
        if (!is_real_dir(dirs[i])) continue;
        if (mount("tmpfs", dirs[i], "tmpfs", MS_NOSUID | MS_NODEV, data) != 0) {
            os_error(why, why_size, errno, dirs[i]);
            goto undo;
        }
        done[ndone++] = dirs[i];
    }
    for (int i = 0; i < nhidden; i++) {
        if (!is_real_dir(hidden[i])) continue; /* not there (yet), or under one covered already */
        if (mount("tmpfs", hidden[i], "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755") != 0) {
            os_error(why, why_size, errno, hidden[i]);
            goto undo;
        }
        done[ndone++] = hidden[i];
    }
    struct stat st;
    if (stat(keep, &st) != 0 || !S_ISDIR(st.st_mode)) { /* the scratch root was under one of them: bind it back */
        int err = make_dirs(keep);
        if (err) {
            os_error(why, why_size, err, keep);
            goto undo;
        }
        snprintf(source, sizeof source, "/proc/self/fd/%d", keep_fd);
        if (mount(source, keep, NULL, MS_BIND | MS_REC, NULL) != 0) {
            os_error(why, why_size, errno, keep);
            goto undo;
        }
        done[ndone++] = keep;
    }
    close(keep_fd);
    if (chdir(cwd) != 0) {
        os_error(why, why_size, errno, cwd);
        keep_fd = -1;
        goto undo;
    }
    return NULL;
undo:
    if (keep_fd >= 0) close(keep_fd);
    while (ndone > 0) umount2(done[--ndone], MNT_DETACH);
    return why;
}

/* --unshare: returns in pid 1 of the new namespaces; the process that called it waits for that one and exits
 * with it. Never returns on failure (exit status 1, why on stderr). */
static void make_namespaces(unsigned long flags, long parent, int report_fd) {
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0 || (long)getppid() != parent) _exit(1); /* orphaned already */
    if (unshare((int)flags) != 0) {
        dprintf(2, "sandbox-helper: cannot make the namespaces: unshare: %s\n", strerror(errno));
        _exit(1);
    }
    int guard[2]; /* its write end closes when we die: the child checks it once its own guard is set */
    if (pipe2(guard, O_CLOEXEC) != 0) {
        dprintf(2, "sandbox-helper: cannot make the namespaces: pipe: %s\n", strerror(errno));
        _exit(1);
    }
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigprocmask(SIG_BLOCK, &block, &old);
    pid_t pid = fork();
    if (pid < 0) {
        dprintf(2, "sandbox-helper: cannot make the namespaces: fork: %s\n", strerror(errno));
        _exit(1);
    }
    if (pid == 0) {
        close(guard[1]);
        sigprocmask(SIG_SETMASK, &old, NULL);
        struct pollfd gone = {guard[0], POLLIN, 0};
        if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0 || poll(&gone, 1, 0) != 0) _exit(1);
        close(guard[0]);
        if (mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
            mount("proc", "/proc", "proc", MS_NOSUID | MS_NOEXEC | MS_NODEV, NULL) != 0) {
            dprintf(2, "sandbox-helper: cannot make the namespaces: mount: %s\n", strerror(errno));
            _exit(1);
        }
        return;
    }
    close(guard[0]);
    close(report_fd); /* only pid 1 reports */
    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) _exit(1);
    }
    if (WIFEXITED(status)) _exit(WEXITSTATUS(status));
    int sig = WTERMSIG(status); /* die of the same signal, as unshare --fork does */
    if (sig != SIGKILL && sig != SIGSTOP) {
        sigset_t only; /* SIGINT and SIGTERM sent to us meanwhile stay blocked: not what we die of */
        sigemptyset(&only);
        sigaddset(&only, sig);
        signal(sig, SIG_DFL);
        sigprocmask(SIG_UNBLOCK, &only, NULL);
    }
    kill(getpid(), sig);
    _exit(1);
}

static void cannot_run(const char *prog, int err) {
    dprintf(2, "sandbox: cannot run %s: %s\n", prog, strerror(err));
    _exit(err == ENOENT ? EXIT_NOT_FOUND : EXIT_CANNOT_RUN);
}

/* In the forked child: limits, uid drop, exec. Never returns. */
static void exec_program(int fd, long uid, struct rlimit *limits, int *resources, int nrl, char **argv) {
    static const int reset[] = {SIGPIPE, SIGXFSZ, SIGINT, SIGTERM, SIGQUIT};
    close(fd);
    for (size_t i = 0; i < sizeof reset / sizeof reset[0]; i++) signal(reset[i], SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int i = 0; i < nrl; i++)
        if (setrlimit(resources[i], &limits[i]) != 0) cannot_run(argv[0], errno);
    if (uid >= 0) {
        if (setgroups(0, NULL) != 0) cannot_run(argv[0], errno);
        if (setresgid((gid_t)uid, (gid_t)uid, (gid_t)uid) != 0) cannot_run(argv[0], errno);
        if (setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) != 0) cannot_run(argv[0], errno);
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) cannot_run(argv[0], errno);
    execvp(argv[0], argv);
    cannot_run(argv[0], errno);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Without a PID namespace: kill and reap the program's leftovers (we are their subreaper). 1 when none is left. */
static int kill_orphans(void) {
    char path[64], buf[4096];
    double end = now() + ORPHAN_SWEEP_SECONDS;
    snprintf(path, sizeof path, "/proc/self/task/%d/children", (int)getpid());
    while (now() < end) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            ssize_t n = read(fd, buf, sizeof buf - 1);
            close(fd);
            if (n > 0) {
                buf[n] = '\0';
                char *save = NULL;
                for (char *word = strtok_r(buf, " \n", &save); word; word = strtok_r(NULL, " \n", &save)) {
                    long kid = strtol(word, NULL, 10);
                    if (kid > 0) kill((pid_t)kid, SIGKILL);
                }
            }
        }
        for (;;) {
            pid_t got = waitpid(-1, NULL, WNOHANG);
            if (got > 0) continue;
            if (got < 0 && errno == ECHILD) return 1;
            if (got < 0 && errno == EINTR) continue;
            break;
        }
        struct timespec pause = {0, 5 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    return 0;
}

/* Append s to out as a JSON string. */
static size_t json_string(char *out, size_t size, size_t at, const char *s) {
    if (at < size) out[at++] = '"';
    for (; *s && at + 7 < size; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[at++] = '\\';
            out[at++] = (char)c;
        } else if (c < 0x20) {
            at += (size_t)snprintf(out + at, size - at, "\\u%04x", c);
        } else {
            out[at++] = (char)c;
        }
    }
    if (at < size) out[at++] = '"';
    return at;
}

int main(int argc, char **argv) {
    int i = 1;
    unsigned long ns_flags = 0;
    long parent = 0;
    if (argc > 3 && strcmp(argv[1], "--unshare") == 0) {
        ns_flags = (unsigned long)parse_ull(argv[2], "FLAGS");
        parent = parse_long(argv[3], "PARENT");
        if (!(ns_flags & CLONE_NEWPID) || !(ns_flags & CLONE_NEWNS)) die_usage("FLAGS without CLONE_NEWPID|CLONE_NEWNS");
        i = 4;
    }
    if (argc - i < 10) die_usage("too few arguments");
    int fd = (int)parse_long(argv[i++], "FD");
    long uid = strcmp(argv[i], "-") == 0 ? -1 : parse_long(argv[i], "UID");
    i++;
    int pid1 = (int)parse_long(argv[i++], "PID1");
    unsigned long long tmp_size = parse_ull(argv[i++], "TMP_SIZE");
    const char *keep = argv[i++];
    const char *cwd = argv[i++];
    long ntmp = parse_long(argv[i++], "NTMP");
    if (ntmp < 0 || ntmp > MAX_TMP || i + ntmp >= argc) die_usage("NTMP");
    char **tmp_dirs = argv + i;
    i += (int)ntmp;
    long nhide = parse_long(argv[i++], "NHIDE");
    if (nhide < 0 || nhide > MAX_TMP || i + nhide >= argc) die_usage("NHIDE");
    char **hidden = argv + i;
    i += (int)nhide;
    long nrl = parse_long(argv[i++], "NRL");
    if (nrl < 0 || nrl > MAX_RL || i + 3 * nrl >= argc) die_usage("NRL");
    struct rlimit limits[MAX_RL];
    int resources[MAX_RL];
    for (long r = 0; r < nrl; r++) {
        resources[r] = (int)parse_long(argv[i++], "RESOURCE");
        limits[r].rlim_cur = (rlim_t)parse_ull(argv[i++], "SOFT");
        limits[r].rlim_max = (rlim_t)parse_ull(argv[i++], "HARD");
    }
    if (i >= argc || strcmp(argv[i], "--") != 0 || i + 1 >= argc) die_usage("-- ARGV");
    char **program = argv + i + 1;
    if (ns_flags) {
        make_namespaces(ns_flags, parent, fd);
        pid1 = 1;
    }

    char why[1024];
    const char *tmp_json = "null";
    const char *tmp_error = NULL;
    if (ntmp > 0 || nhide > 0) {
        tmp_error = private_tmp(tmp_dirs, (int)ntmp, hidden, (int)nhide, keep, tmp_size, cwd, why, sizeof why);
        tmp_json = tmp_error ? NULL : "true";
    }
    if (tmp_error && nhide > 0) { /* the program would see what it must not: do not run it */
        dprintf(2, "sandbox: cannot hide the run's folders from %s: %s\n", program[0], tmp_error);
        _exit(EXIT_CANNOT_RUN);
    }
    if (!pid1) prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    pid_t pid = fork();
    if (pid < 0) {
        dprintf(2, "sandbox: cannot run %s: %s\n", program[0], strerror(errno));
        _exit(EXIT_CANNOT_RUN);
    }
    if (pid == 0) exec_program(fd, uid, limits, resources, (int)nrl, program);

    char report[2048];
    size_t at = (size_t)snprintf(report, sizeof report, "{\"rl\": true, \"tmp\": ");
    if (tmp_json) {
        at += (size_t)snprintf(report + at, sizeof report - at, "%s", tmp_json);
    } else {
        at = json_string(report, sizeof report - 64, at, tmp_error);
    }
    int status = 0;
    struct rusage usage;
    for (;;) {
        pid_t got = wait4(-1, &status, 0, &usage);
        if (got == pid) {
            double cpu = (double)usage.ru_utime.tv_sec + (double)usage.ru_utime.tv_usec / 1e6 +
                         (double)usage.ru_stime.tv_sec + (double)usage.ru_stime.tv_usec / 1e6;
            at += (size_t)snprintf(report + at, sizeof report - at, ", \"rc\": ");
            at += (size_t)(WIFEXITED(status) ? snprintf(report + at, sizeof report - at, "%d", WEXITSTATUS(status))
                                             : snprintf(report + at, sizeof report - at, "null"));
            at += (size_t)snprintf(report + at, sizeof report - at, ", \"sig\": ");
            at += (size_t)(WIFSIGNALED(status) ? snprintf(report + at, sizeof report - at, "%d", WTERMSIG(status))
                                               : snprintf(report + at, sizeof report - at, "null"));
            at += (size_t)snprintf(report + at, sizeof report - at, ", \"cpu\": %.6f", cpu);
            break;
        }
        if (got < 0 && errno == ECHILD) break;
    }
    if (at + 2 < sizeof report) {
        report[at++] = '}';
        if (write(fd, report, at) < 0) { /* the reader went away: nothing to report to */ }
    }
    close(fd);
    int clean = 1;
    if (!pid1) clean = kill_orphans();
    _exit(clean ? 0 : 3);
}
