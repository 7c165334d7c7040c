/*
 * Key naming and the server-side scripts.
 *
 * A lock lives at <prefix><key>.  Two companion keys go with it:
 *   <prefix>fluxalock:fence       the fence counter (one key, never expires)
 *   <prefix>fluxalock:wake:<key>  the wake-up list waiters block on (short
 *                                 lived: it expires a moment after a release)
 * On a cluster both must live in the lock key's hash slot, so one script can
 * touch them together: there they are <prefix>{T}fluxalock:..., where T is a
 * short tag that hashes to the lock key's slot (so the scheme works for every
 * key, whatever braces it contains), and the fence counter is one per slot
 * (at most 16384 keys per prefix).  A prefix that carries its own hash tag
 * ("{jobs}:") already pins every key of the pool to one slot; then T is left
 * out.
 */
#include <pthread.h>
#include <string.h>
#include <stdlib.h>
#include <stdio.h>

#include "fluxalock.h"
#include "modes_scripts.h"

/* ---- the scripts ------------------------------------------------------- */

/*
 * The value of a lock key is exactly the holder's 40-character token:
 * fluxalock never writes to a lock key it does not hold, so a lock of
 * another client library on the same key (redis-py's Lock, node-redlock,
 * bsm/redislock) keeps its value and can still be released and refreshed
 * by its holder.  Every release pushes one wake-up (one waiter, no
 * stampede) that expires by itself.  The list never holds more than one:
 * the release deletes it first (a list with an element has no blocked
 * waiter, so nothing is lost), with DEL rather than LTRIM so that the
 * minimal ACL of 0.1 (docs/reliability.md) still covers the scripts.
 * It also publishes on the wake-up key's name, for the waiters of event-loop
 * hosts (wake.c); redis.pcall, since that ACL grants no channel.
 * release, ttl and refresh also accept token .. "+": fluxalock 0.1's
 * waiters appended "+" to the holder's value, and a fleet upgrading from
 * 0.1 runs both for a while.  No user data is ever part of a script body:
 * keys and tokens travel as KEYS and ARGV.
 */
fl_script fl_scripts[FL_NSCRIPTS] = {
  { "obtain",
    /* KEYS: lock, fence. ARGV: token, ms */
    "if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then\n"
    "  return redis.call('incr', KEYS[2])\n"
    "end\n"
    /* held in a mode (modes_scripts.h): -1, so that a waiting obtain
       queues behind the key's holders (readers do not starve it) */
    "if redis.call('get', KEYS[1]) == '" FL_MODE_MARK "' then return -1 end\n"
    "return 0\n", "" },
  { "release",
    /* KEYS: lock, wake. ARGV: token, wake-up lifetime in ms, the
       releasing process's wake-up id (wake.c) */
    "local v = redis.call('get', KEYS[1])\n"
    "if v ~= ARGV[1] and v ~= ARGV[1] .. '+' then return 0 end\n"
    "redis.call('del', KEYS[1])\n"
    "redis.call('del', KEYS[2])\n"
    "redis.call('lpush', KEYS[2], '1')\n"
    "redis.call('pexpire', KEYS[2], ARGV[2])\n"
    "redis.pcall('publish', KEYS[2], ARGV[3] or '1')\n"
    "return 1\n", "" },
  { "ttl",
    /* KEYS: lock. ARGV: token. -> ms left, or -1 when not held.  PTTL
       rounds down: a key it still holds with under 1 ms left is 1 ms,
       never 0, which lock:ttl() answers only for a lock no longer held */
    "local v = redis.call('get', KEYS[1])\n"
    "if v ~= ARGV[1] and v ~= ARGV[1] .. '+' then return -1 end\n"
    "local t = redis.call('pttl', KEYS[1])\n"
    "if t < 0 then return 0 end\n"
    "return math.max(t, 1)\n", "" },
  { "refresh",
    /* KEYS: lock. ARGV: token, ms, "1" to replace. -> 1 or 0 */
    "local v = redis.call('get', KEYS[1])\n"
    "if v ~= ARGV[1] and v ~= ARGV[1] .. '+' then return 0 end\n"
    "local ms = tonumber(ARGV[2])\n"
    "if ARGV[3] ~= '1' then\n"
    "  local t = redis.call('pttl', KEYS[1])\n"
    "  if t > 0 then ms = ms + t end\n"
    "end\n"
    "redis.call('pexpire', KEYS[1], ms)\n"
    "return 1\n", "" },
  FL_MODE_SCRIPTS,
  { "handover",
    /* a release that hands the lock straight to this process's next waiter
       (llock.c): it is never free, so no other process slips in between.
       KEYS: lock, fence. ARGV: the holder's token, the waiter's, its ms.
       -> the waiter's fence, or 0 when the holder no longer held it */
    "local v = redis.call('get', KEYS[1])\n"
    "if v ~= ARGV[1] and v ~= ARGV[1] .. '+' then return 0 end\n"
    "redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3])\n"
    "return redis.call('incr', KEYS[2])\n", "" }
};

/* ---- hash slots ---------------------------------------------------------- */

static uint16_t crctab[256];
/* tags[s] is a 1..3 character string whose slot is s */
static char tags[16384][4];

static uint16_t crc16(const char *s, size_t n) {
  uint16_t crc = 0;
  size_t i;
  for (i = 0; i < n; i++)
    crc = (uint16_t)((crc << 8) ^ crctab[((crc >> 8) ^ (unsigned char)s[i]) & 0xff]);
  return crc;
}

unsigned fl_slot(const char *key, size_t len) {
  /* Redis Cluster: hash only the first {...} if it is non-empty */
  const char *open = memchr(key, '{', len);
  if (open) {
    size_t from = (size_t)(open - key) + 1;
    const char *close = memchr(key + from, '}', len - from);
    if (close && close > key + from) key += from, len = (size_t)(close - key);
  }
  return crc16(key, len) & 16383u;
}

/* "MOVED <slot> <host>:<port>" or "ASK ...": the slot, host and port it
   names.  An empty host (Redis's ":port" when the node's endpoint is not
   known) or "?" means the node that answered: 'from', its host.  1, or 0
   when malformed.  The one parser of redirects (kind_cluster.c, renew_io.c) */
int fl_redirect_parse(const char *msg, const char *from, unsigned *slot, char *host,
                      size_t hostcap, int *port) {
  const char *sp = strchr(msg, ' '), *addr, *colon;
  char *end;
  unsigned long sl;
  long pt;
  size_t hl;
  if (!sp) return 0;
  sl = strtoul(sp + 1, &end, 10);
  if (end == sp + 1 || *end != ' ' || sl > 16383) return 0;
  addr = end + 1;
  if (!(colon = strrchr(addr, ':'))) return 0;
  hl = (size_t)(colon - addr);
  if (hl == 0 || (hl == 1 && addr[0] == '?')) addr = from, hl = from ? strlen(from) : 0;
  if (hl == 0 || hl >= hostcap || memchr(addr, ' ', hl)) return 0;
  memcpy(host, addr, hl);
  host[hl] = '\0';
  pt = strtol(colon + 1, &end, 10);
  if (end == colon + 1 || *end != '\0' || pt < 1 || pt > 65535) return 0;
  *port = (int)pt;
  *slot = (unsigned)sl;
  return 1;
}

/* the tables, once per process: every Lua state shares them, and two may
   load the module at once on two threads */
static void scripts_make(void) {
  static const char al[] = "0123456789abcdefghijklmnopqrstuvwxyz"
                           "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
  int i, j, k, left = 16384;
  char s[4];
  for (i = 0; i < 256; i++) { /* CRC16-CCITT (XMODEM), polynomial 0x1021 */
    uint16_t c = (uint16_t)(i << 8);
    for (j = 0; j < 8; j++) c = (uint16_t)(c & 0x8000 ? (c << 1) ^ 0x1021 : c << 1);
    crctab[i] = c;
  }
  for (i = 0; i < FL_NSCRIPTS; i++) fl_sha1_hex(fl_scripts[i].body, fl_scripts[i].sha);
  memset(tags, 0, sizeof tags);
  /* 62^3 = 238328 three-character tags cover all 16384 slots (checked by
     the loop: it stops once every slot has one) */
  for (i = 0; i < 62 && left; i++)
    for (j = 0; j < 62 && left; j++)
      for (k = 0; k < 62 && left; k++) {
        unsigned sl;
        s[0] = al[i]; s[1] = al[j]; s[2] = al[k]; s[3] = 0;
        sl = crc16(s, 3) & 16383u;
        if (!tags[sl][0]) { memcpy(tags[sl], s, 4); left--; }
      }
}

void fl_scripts_init(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, scripts_make);
}

/* <prefix>{T}fluxalock:<what>[<key>], or <prefix>fluxalock:<what>[<key>]
   when the prefix pins the slot itself; key is without the prefix, and is
   appended only when withkey (the fence counter is one per slot) */
static size_t companion(const fl_opts *o, const char *key, size_t keylen,
                        const char *what, int withkey, char *out) {
  size_t n = 0, wl = strlen(what);
  memcpy(out, o->prefix, o->prefixlen);
  n = o->prefixlen;
  if (o->cluster && !o->prefix_tagged) {
    /* the slot of the full lock key <prefix><key> */
    unsigned sl;
    char stackbuf[256], *full = stackbuf;
    size_t fl = o->prefixlen + keylen;
    if (fl > sizeof stackbuf && !(full = malloc(fl))) return 0;
    memcpy(full, o->prefix, o->prefixlen);
    memcpy(full + o->prefixlen, key, keylen);
    sl = fl_slot(full, fl);
    if (full != stackbuf) free(full);
    out[n++] = '{';
    memcpy(out + n, tags[sl], strlen(tags[sl]));
    n += strlen(tags[sl]);
    out[n++] = '}';
  }
  memcpy(out + n, "fluxalock:", 10);
  n += 10;
  memcpy(out + n, what, wl);
  n += wl;
  if (!withkey) return n;
  memcpy(out + n, key, keylen);
  return n + keylen;
}

#define COMPANION_MAX(o, keylen, what) ((o)->prefixlen + 16 + strlen(what) + (keylen))

const char *fl_companion(fl_req *c, const char *key, size_t keylen,
                         const char *what, int withkey, size_t *len) {
  size_t need = COMPANION_MAX(&c->pool->o, keylen, what);
  if (need > c->scratchcap) {
    char *s = realloc(c->scratch, need);
    if (!s) return NULL;
    c->scratch = s;
    c->scratchcap = need;
  }
  *len = companion(&c->pool->o, key, keylen, what, withkey, c->scratch);
  return *len ? c->scratch : NULL;
}

char *fl_companion_dup(const fl_opts *o, const char *key, size_t keylen,
                       const char *what, size_t *len) {
  char *s = malloc(COMPANION_MAX(o, keylen, what));
  if (s && !(*len = companion(o, key, keylen, what, 1, s))) {
    free(s);
    s = NULL;
  }
  return s;
}

/* ---- command building ---------------------------------------------------- */

void fl_cmd_script(fl_cmd *cmd, int script, int nkeys) {
  static const char *nk[] = {"0", "1", "2", "3", "4", "5", "6"};
  cmd->script = script;
  cmd->argc = 0;
  fl_cmd_arg(cmd, "EVALSHA", 7);
  fl_cmd_arg(cmd, fl_scripts[script].sha, 40);
  fl_cmd_arg(cmd, nk[nkeys], 1);
}

void fl_cmd_arg(fl_cmd *cmd, const char *s, size_t len) {
  cmd->argv[cmd->argc] = s;
  cmd->argvlen[cmd->argc] = len;
  cmd->argc++;
}

/* ---- the commands of the lock operations ------------------------------- */

/* num: room for the ms argument, memory that lives as long as cmd */
void fl_cmd_obtain(fl_cmd *cmd, char num[32], const char *key, size_t keylen,
                   const char *fence, size_t fencelen, const char *token, long long ms) {
  snprintf(num, 32, "%lld", ms);
  fl_cmd_script(cmd, FL_S_OBTAIN, 2);
  fl_cmd_arg(cmd, key, keylen);
  fl_cmd_arg(cmd, fence, fencelen);
  fl_cmd_arg(cmd, token, FL_TOKEN_LEN);
  fl_cmd_arg(cmd, num, strlen(num));
}

void fl_cmd_handover(fl_cmd *cmd, char num[32], const char *key, size_t keylen,
                     const char *fence, size_t fencelen, const char *old,
                     const char *token, long long ms) {
  snprintf(num, 32, "%lld", ms);
  fl_cmd_script(cmd, FL_S_HANDOVER, 2);
  fl_cmd_arg(cmd, key, keylen);
  fl_cmd_arg(cmd, fence, fencelen);
  fl_cmd_arg(cmd, old, FL_TOKEN_LEN);
  fl_cmd_arg(cmd, token, FL_TOKEN_LEN);
  fl_cmd_arg(cmd, num, strlen(num));
}

void fl_cmd_release(fl_cmd *cmd, const char *key, size_t keylen,
                    const char *wake, size_t wakelen, const char *token) {
  fl_cmd_script(cmd, FL_S_RELEASE, 2);
  fl_cmd_arg(cmd, key, keylen);
  fl_cmd_arg(cmd, wake, wakelen);
  fl_cmd_arg(cmd, token, FL_TOKEN_LEN);
  /* a wake-up nobody takes is gone after 1 s: at worst one waiter that
     arrives later tries once for nothing */
  fl_cmd_arg(cmd, "1000", 4);
  /* the message names this process: its own subscription skips it (the
     release already woke the local waiter) */
  fl_cmd_arg(cmd, fl_wake_id(), FL_WAKE_ID_LEN);
}

void fl_cmd_ttl(fl_cmd *cmd, const char *key, size_t keylen, const char *token) {
  fl_cmd_script(cmd, FL_S_TTL, 1);
  fl_cmd_arg(cmd, key, keylen);
  fl_cmd_arg(cmd, token, FL_TOKEN_LEN);
}

void fl_cmd_refresh(fl_cmd *cmd, char num[32], const char *key, size_t keylen,
                    const char *token, long long ms, int replace) {
  snprintf(num, 32, "%lld", ms);
  fl_cmd_script(cmd, FL_S_REFRESH, 1);
  fl_cmd_arg(cmd, key, keylen);
  fl_cmd_arg(cmd, token, FL_TOKEN_LEN);
  fl_cmd_arg(cmd, num, strlen(num));
  fl_cmd_arg(cmd, replace ? "1" : "0", 1);
}

/* BLPOP on the wake-up list for secs (>= 0.001: BLPOP 0 blocks for ever) */
void fl_cmd_await(fl_cmd *cmd, char num[32], const char *wake, size_t wakelen,
                  double secs) {
  snprintf(num, 32, "%.3f", secs);
  cmd->argc = 0;
  cmd->script = -1;
  fl_cmd_arg(cmd, "BLPOP", 5);
  fl_cmd_arg(cmd, wake, wakelen);
  fl_cmd_arg(cmd, num, strlen(num));
}
