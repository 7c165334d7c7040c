/*
 * An LD_PRELOAD allocator for the allocation-failure specs: malloc and
 * realloc as glibc's, except that the n-th call made directly from one
 * named function (an exported one of any loaded object) returns NULL.
 *
 *   FAILALLOC_FUNC=fl_link_push FAILALLOC_NTH=2 LD_PRELOAD=./failalloc.so ...
 *
 * The caller is the return address, found inside the function's body
 * (dladdr1 with its symbol's size): a call the compiler inlined elsewhere
 * is never counted, so a spec must check that the failure happened (a
 * line "failalloc: failed ..." goes to stderr when it does).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void *__libc_malloc(size_t n);
void *__libc_realloc(void *p, size_t n);

static __thread int inside; /* dladdr1 may allocate: no recursion */
static long count;

/* 1 when this call (from 'at') is the one to fail */
static int fails(void *at, const char *what, size_t n) {
  const char *func = getenv("FAILALLOC_FUNC"), *nth = getenv("FAILALLOC_NTH");
  Dl_info info;
  const ElfW(Sym) *sym = NULL;
  int hit = 0;
  if (!func || !nth || inside) return 0;
  inside = 1;
  if (dladdr1(at, &info, (void **)&sym, RTLD_DL_SYMENT) && sym && info.dli_sname &&
      strcmp(info.dli_sname, func) == 0 &&
      (char *)at < (char *)info.dli_saddr + sym->st_size && ++count == atol(nth)) {
    char msg[160];
    int len = snprintf(msg, sizeof msg, "failalloc: failed %s(%zu) #%ld in %s\n", what, n, count, func);
    if (write(2, msg, (size_t)len) < 0) { /* nothing to do */ }
    hit = 1;
  }
  inside = 0;
  return hit;
}

void *malloc(size_t n) {
  if (fails(__builtin_return_address(0), "malloc", n)) return NULL;
  return __libc_malloc(n);
}

void *realloc(void *p, size_t n) {
  if (fails(__builtin_return_address(0), "realloc", n)) return NULL;
  return __libc_realloc(p, n);
}
