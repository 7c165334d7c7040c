/*
 * fluxalock.proc: the process handling the fluxalock command needs and Lua
 * 5.4 lacks (Debian's lua-posix builds only for 5.1-5.3).
 *
 *   pid | nil, msg, status = proc.spawn(argv [, env])
 *   what, n = proc.wait(pid [, seconds [, fd]])
 *   true | nil, msg = proc.killpg(pgid, sig)
 *   proc.drain(fd), proc.signals (name -> number)
 *
 * spawn forks, puts the child in a session of its own (setsid: it leads a
 * new process group, so a signal to the group reaches its grandchildren),
 * and execs argv (PATH searched) with the environment plus env's additions.
 * The child dies with this process (PR_SET_PDEATHSIG: SIGKILL), also when
 * this one is SIGKILLed, and so does its process group (a watcher process:
 * see below).  Every signal is blocked across fork, so no handler runs in
 * the child before its exec.
 * An exec failure travels to the parent through a close-on-exec pipe: the
 * parent reaps the child and returns nil, message, 127 (not found) or 126
 * (found but not runnable), as a shell does.  Everything the child needs is
 * built before fork, so between fork and exec the child only makes
 * async-signal-safe calls (the process may have a renewal thread).
 *
 * The first spawn installs handlers (SA_RESTART) for SIGCHLD and for the
 * forwarded signals SIGINT, SIGTERM, SIGHUP, SIGQUIT, except those ignored
 * when it ran (nohup, a background job: they stay ignored, as a program is
 * expected to do); each handler writes its number to a non-blocking
 * self-pipe.  The child starts with the four at their defaults and an
 * empty signal mask: it is in a session of its own, so those signals reach
 * it only as forwarded ones, and a forwarded signal must not meet an
 * ignore inherited from whoever started this process.  SIGTSTP (Ctrl-Z)
 * is ignored from then on: stopped, this process would renew nothing while
 * the command, out of reach of the terminal's stop, ran on; the child gets
 * it back at its default (unless it was ignored before).
 *
 * wait sleeps in poll(2) on the self-pipe (and fd) and returns
 *   "exit", code | "signal", n   the child ended (it is reaped);
 *   "forward", signo             a forwarded signal arrived; it was passed
 *                                to the child's process group already;
 *   "fd"                         fd is readable;
 *   "timeout"                    seconds elapsed (nil: no timeout).
 * No busy loop: SIGCHLD wakes the poll, and a SIGCHLD that arrives before
 * the poll starts is a byte in the pipe.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

extern char **environ;

#define NFWD 4
static const int fwd[NFWD] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};
static int sp[2] = {-1, -1};         /* the self-pipe */
static int tstp_ignored;             /* SIGTSTP was ignored before setup */

static void on_signal(int sig) {
  int e = errno;
  unsigned char b = (unsigned char)sig;
  if (write(sp[1], &b, 1) < 0) { /* full: a wake-up is pending anyway */ }
  errno = e;
}

static int set_flags(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -1;
  return fcntl(fd, F_SETFD, FD_CLOEXEC);
}

/* the self-pipe and the handlers, once; 0 or an errno */
static int setup(void) {
  struct sigaction sa;
  int i;
  if (sp[0] >= 0) return 0;
  if (pipe(sp) < 0) return errno;
  if (set_flags(sp[0]) < 0 || set_flags(sp[1]) < 0) {
    int e = errno;
    close(sp[0]), close(sp[1]);
    sp[0] = sp[1] = -1;
    return e;
  }
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  for (i = 0; i < NFWD; i++) {
    struct sigaction old;
    if (sigaction(fwd[i], NULL, &old) == 0 && old.sa_handler != SIG_IGN)
      sigaction(fwd[i], &sa, NULL);
  }
  sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
  sigaction(SIGCHLD, &sa, NULL);
  { /* a stop (Ctrl-Z) would freeze the renewal while the command, in a
       session of its own, runs on: ignored (SIGSTOP cannot be) */
    struct sigaction old;
    tstp_ignored = sigaction(SIGTSTP, NULL, &old) == 0 && old.sa_handler == SIG_IGN;
    signal(SIGTSTP, SIG_IGN);
  }
  return 0;
}

/* ---- spawn ------------------------------------------------------------- */

/* does environment entry e name one of the additions ("K=V" strings)? */
static int overridden(const char *e, char **add, int nadd) {
  int i;
  for (i = 0; i < nadd; i++) {
    size_t n = (size_t)(strchr(add[i], '=') - add[i]);
    if (strncmp(e, add[i], n) == 0 && e[n] == '=') return 1;
  }
  return 0;
}

/* a NULL-terminated array of the strings of the table at idx (a userdata
   on the stack owns it); table values are anchored by the table */
static char **strings(lua_State *L, int idx, int *n) {
  int i, len = (int)luaL_len(L, idx);
  char **v = lua_newuserdatauv(L, sizeof(char *) * ((size_t)len + 1), 0);
  for (i = 0; i < len; i++) {
    union { const char *c; char *m; } u; /* exec wants char *const[] */
    lua_rawgeti(L, idx, i + 1);
    u.c = lua_tostring(L, -1);
    v[i] = u.m;
    lua_pop(L, 1);
  }
  v[len] = NULL;
  *n = len;
  return v;
}

/* argv (index 1): a non-empty sequence of strings; raise otherwise */
static void check_argv(lua_State *L) {
  lua_Integer i, len;
  luaL_checktype(L, 1, LUA_TTABLE);
  len = luaL_len(L, 1);
  luaL_argcheck(L, len >= 1, 1, "argv must not be empty");
  luaL_argcheck(L, len < INT_MAX / 2, 1, "argv too long");
  for (i = 1; i <= len; i++) {
    if (lua_rawgeti(L, 1, i) != LUA_TSTRING) {
      lua_pushfstring(L, "argv[%d] must be a string, got %s", (int)i, luaL_typename(L, -1));
      luaL_argerror(L, 1, lua_tostring(L, -1));
    }
    lua_pop(L, 1);
  }
}

/* env (index 2) -> a sequence of "K=V" strings, pushed */
static void env_additions(lua_State *L) {
  int n = 0;
  lua_newtable(L);
  if (lua_isnoneornil(L, 2)) return;
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
    if (!k || !*k || strchr(k, '=') || lua_type(L, -1) != LUA_TSTRING)
      luaL_argerror(L, 2, "env must map names (without '=') to strings");
    lua_pushfstring(L, "%s=%s", k, lua_tostring(L, -1));
    lua_rawseti(L, -4, ++n);
    lua_pop(L, 1);
  }
}

/* the whole environment: environ without the overridden names, then the
   additions (table at idx); owned by a userdata pushed on the stack */
static char **environment(lua_State *L, int idx) {
  int nadd, nenv = 0, i, j = 0;
  char **add = strings(L, idx, &nadd), **envp;
  while (environ && environ[nenv]) nenv++;
  envp = lua_newuserdatauv(L, sizeof(char *) * ((size_t)nenv + (size_t)nadd + 1), 0);
  for (i = 0; i < nenv; i++)
    if (!overridden(environ[i], add, nadd)) envp[j++] = environ[i];
  for (i = 0; i < nadd; i++) envp[j++] = add[i];
  envp[j] = NULL;
  return envp;
}

/* in the child (every signal blocked): never returns */
static void child(char **argv, char **envp, const int ep[2], pid_t parent) {
  sigset_t none;
  int i, e, errfd = ep[1];
  close(ep[0]);
  setsid();
#ifdef __linux__
  /* the command dies with fluxalock, even of a SIGKILL (which nothing in
     fluxalock can pass on); a parent already gone: nobody holds the lock */
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) {
    e = errno;
    if (write(errfd, &e, sizeof e) < 0) { /* the parent sees 0 bytes */ }
    _exit(126);
  }
  if (getppid() != parent) _exit(127);
#else
  (void)parent;
#endif
  for (i = 0; i < NFWD; i++) signal(fwd[i], SIG_DFL);
  signal(SIGCHLD, SIG_DFL);
  if (!tstp_ignored) signal(SIGTSTP, SIG_DFL);
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  environ = envp;
  execvp(argv[0], argv);
  e = errno;
  if (write(errfd, &e, sizeof e) < 0) { /* the parent sees 0 bytes */ }
  _exit(e == ENOENT ? 127 : 126);
}

/* ---- the watcher --------------------------------------------------------- */

/*
 * PR_SET_PDEATHSIG reaches the command only, not the processes it started.
 * Each command gets a watcher: a process forked from this one that waits
 * for a byte on a pipe.  The byte comes when the command was reaped here;
 * EOF without it means this process died first (a SIGKILL), and the
 * watcher SIGKILLs the command's process group.  Forked from a process that
 * may have threads, it makes only async-signal-safe calls, with every
 * signal blocked (a SIGKILL or SIGSTOP still reaches it).
 */
#define NWATCH 32
static struct { pid_t cmd, pid; int fd; } watch[NWATCH];

static void watcher(int rfd, pid_t group) {
  char b;
  ssize_t n;
  int fd;
  for (fd = 0; fd < 1024; fd++)
    if (fd != rfd) close(fd);
  do n = read(rfd, &b, 1); while (n < 0 && errno == EINTR);
  if (n <= 0) kill(-group, SIGKILL);
  _exit(0);
}

/* a watcher for the command cmd (signals blocked); none when out of room */
static void watch_start(pid_t cmd) {
  int i, wp[2];
  pid_t pid;
  for (i = 0; i < NWATCH && watch[i].cmd; i++) {}
  if (i == NWATCH || pipe(wp) < 0) return;
  set_flags(wp[1]);
  fcntl(wp[0], F_SETFD, FD_CLOEXEC);
  if ((pid = fork()) == 0) watcher(wp[0], cmd);
  close(wp[0]);
  if (pid < 0) {
    close(wp[1]);
    return;
  }
  watch[i].cmd = cmd;
  watch[i].pid = pid;
  watch[i].fd = wp[1];
}

/* cmd was reaped: its watcher is told, and reaped in turn */
static void watch_end(pid_t cmd) {
  int i;
  for (i = 0; i < NWATCH; i++)
    if (watch[i].cmd == cmd) {
      if (write(watch[i].fd, "x", 1) < 0) { /* it is gone already */ }
      close(watch[i].fd);
      while (waitpid(watch[i].pid, NULL, 0) < 0 && errno == EINTR) {}
      watch[i].cmd = 0;
    }
}

static int proc_spawn(lua_State *L) {
  int n, e = 0, ep[2], err;
  char **argv, **envp;
  ssize_t got;
  pid_t pid, self = getpid();
  sigset_t all, old;
  check_argv(L);
  env_additions(L); /* index 3 */
  argv = strings(L, 1, &n);
  envp = environment(L, 3);
  if ((err = setup()) != 0 || pipe(ep) < 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "fluxalock: spawn: %s", strerror(err ? err : errno));
    return 2;
  }
  set_flags(ep[1]);
  /* no handler may run in the child before exec: it would write to the
     self-pipe the parent reads (a forwarded signal nobody sent) */
  sigfillset(&all);
  sigprocmask(SIG_SETMASK, &all, &old);
  pid = fork();
  if (pid == 0) child(argv, envp, ep, self);
  err = errno;
  if (pid > 0) watch_start(pid);
  sigprocmask(SIG_SETMASK, &old, NULL);
  close(ep[1]);
  if (pid < 0) {
    close(ep[0]);
    lua_pushnil(L);
    lua_pushfstring(L, "fluxalock: fork: %s", strerror(err));
    return 2;
  }
  do got = read(ep[0], &e, sizeof e); while (got < 0 && errno == EINTR);
  close(ep[0]);
  if (got == (ssize_t)sizeof e) {
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
    watch_end(pid);
    lua_pushnil(L);
    lua_pushfstring(L, "fluxalock: %s: %s", argv[0], strerror(e));
    lua_pushinteger(L, e == ENOENT ? 127 : 126);
    return 3;
  }
  lua_pushinteger(L, (lua_Integer)pid);
  return 1;
}

/* ---- wait -------------------------------------------------------------- */

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* 1 and the results pushed when pid ended, 0 if not, -1 on error */
static int reap(lua_State *L, pid_t pid) {
  int st;
  pid_t r;
  do r = waitpid(pid, &st, WNOHANG); while (r < 0 && errno == EINTR);
  if (r < 0) return -1;
  if (r == 0) return 0;
  watch_end(pid);
  if (WIFSIGNALED(st)) {
    lua_pushliteral(L, "signal");
    lua_pushinteger(L, WTERMSIG(st));
  } else {
    lua_pushliteral(L, "exit");
    lua_pushinteger(L, WEXITSTATUS(st));
  }
  return 1;
}

/* read the self-pipe; pass forwarded signals to group pid; the last one
   forwarded, or 0 */
static int forward(pid_t pid) {
  unsigned char buf[64];
  ssize_t n, i;
  int last = 0, k;
  while ((n = read(sp[0], buf, sizeof buf)) > 0)
    for (i = 0; i < n; i++)
      for (k = 0; k < NFWD; k++)
        if (buf[i] == fwd[k]) {
          kill(-pid, buf[i]);
          last = buf[i];
        }
  return last;
}

static int poll_ms(double deadline) {
  double left;
  if (deadline < 0) return -1;
  left = (deadline - now()) * 1000.0;
  if (left <= 0) return 0;
  return left > 60000.0 ? 60000 : (int)left + 1;
}

static int proc_wait(lua_State *L) {
  pid_t pid = (pid_t)luaL_checkinteger(L, 1);
  double secs = luaL_optnumber(L, 2, -1), deadline = secs < 0 ? -1 : now() + secs;
  int fd = (int)luaL_optinteger(L, 3, -1), r, sig;
  struct pollfd p[2];
  luaL_argcheck(L, pid > 0, 1, "pid must be positive");
  if ((r = setup()) != 0) return luaL_error(L, "fluxalock: wait: %s", strerror(r));
  for (;;) {
    if ((r = reap(L, pid)) != 0) break;
    p[0].fd = sp[0], p[0].events = POLLIN, p[0].revents = 0;
    p[1].fd = fd, p[1].events = POLLIN, p[1].revents = 0;
    r = poll(p, fd >= 0 ? 2 : 1, poll_ms(deadline));
    if (r < 0 && errno != EINTR) break;
    if ((sig = forward(pid)) != 0) {
      lua_pushliteral(L, "forward");
      lua_pushinteger(L, sig);
      return 2;
    }
    if (r > 0 && fd >= 0 && p[1].revents) {
      lua_pushliteral(L, "fd");
      return 1;
    }
    if (deadline >= 0 && now() >= deadline) {
      if ((r = reap(L, pid)) != 0) break;
      lua_pushliteral(L, "timeout");
      return 1;
    }
  }
  if (r > 0) return 2;
  lua_pushnil(L);
  lua_pushfstring(L, "fluxalock: wait: %s", strerror(errno));
  return 2;
}

/* ---- the rest ---------------------------------------------------------- */

static int proc_killpg(lua_State *L) {
  lua_Integer pg = luaL_checkinteger(L, 1), sig = luaL_checkinteger(L, 2);
  luaL_argcheck(L, pg > 1 && pg <= INT_MAX, 1, "process group must be > 1");
  luaL_argcheck(L, sig >= 0 && sig < 65, 2, "not a signal number");
  if (kill(-(pid_t)pg, (int)sig) < 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "fluxalock: killpg: %s", strerror(errno));
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* read a non-blocking descriptor until it would block */
static int proc_drain(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1);
  char buf[64];
  ssize_t n;
  do n = read(fd, buf, sizeof buf); while (n > 0 || (n < 0 && errno == EINTR));
  return 0;
}

int luaopen_fluxalock_proc(lua_State *L);
int luaopen_fluxalock_proc(lua_State *L) {
  static const luaL_Reg fns[] = {{"spawn", proc_spawn}, {"wait", proc_wait},
                                 {"killpg", proc_killpg}, {"drain", proc_drain},
                                 {NULL, NULL}};
  static const struct { const char *name; int n; } sigs[] = {
      {"HUP", SIGHUP}, {"INT", SIGINT}, {"QUIT", SIGQUIT}, {"KILL", SIGKILL},
      {"TERM", SIGTERM}, {"USR1", SIGUSR1}, {"USR2", SIGUSR2}};
  size_t i;
  luaL_newlib(L, fns);
  lua_newtable(L);
  for (i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
    lua_pushinteger(L, sigs[i].n);
    lua_setfield(L, -2, sigs[i].name);
  }
  lua_setfield(L, -2, "signals");
  return 1;
}
