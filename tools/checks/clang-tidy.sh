#!/bin/sh
# CI: clang-tidy over the C core and the fuzz harnesses, any finding fails.
# Checks: bugprone-*, cert-*, clang-analyzer-*, without
#   cert-err33-c            snprintf/fprintf results unchecked on purpose: a
#                           message cut at FL_ERRLEN is still a message
#   bugprone-easily-swappable-parameters  flags every (key, keylen)-style
#                           signature: the API's shape, not a defect
#   bugprone-reserved-identifier, cert-dcl37-c, cert-dcl51-cpp  the feature
#                           test macros _GNU_SOURCE / _POSIX_C_SOURCE
#   bugprone-implicit-widening-of-multiplication-result  int loop indexes
#                           below 100 used as offsets (SHA-1, hex)
#   bugprone-not-null-terminated-result  keys are binary with explicit
#                           lengths; memcpy without a NUL is the intent
#   bugprone-sizeof-expression  "sizeof *a" where a is an array of pointers
#                           (realloc of fl_req *[]): the idiom it misreads
cd "$(dirname "$0")/../.." || exit 1
checks='-*,bugprone-*,cert-*,clang-analyzer-*,-cert-err33-c,-bugprone-easily-swappable-parameters,-bugprone-reserved-identifier,-cert-dcl37-c,-cert-dcl51-cpp,-bugprone-implicit-widening-of-multiplication-result,-bugprone-not-null-terminated-result,-bugprone-sizeof-expression'
inc=$(pkg-config --variable=includedir lua5.4 2>/dev/null)/lua5.4
# one clang-tidy per file: given several files at once, clang-tidy 14's
# analyzer reports every va_start'ed va_list of a file after the first as
# uninitialized (valist.Uninitialized), while each file alone is clean
out= status=0
for f in csrc/*.c fuzz/config_fuzz.c fuzz/reply_fuzz.c; do
  one=$(clang-tidy --quiet --checks="$checks" --warnings-as-errors='*' "$f" -- -std=c99 \
    -I"$inc" -Icsrc -include tools/checks/lib/tidy-noreturn.h -DCONFIG_LUA='"config.lua"' 2>&1) ||
    status=1
  out="$out
$one"
done
echo "$out" | grep -E 'warning|error|note' | grep -v 'warnings\? generated' | head -n 60
echo "clang-tidy: exit $status"
exit $status
