#!/bin/sh
# Part k of n of a list of spec files, the parts about equally long by the
# times of an earlier run (tools/test-times.txt; a file not timed there
# counts as 60 s): the longest file first, each to the part with the least
# time so far.  Prints the files of part k, one per line.
#
#   sh tools/checks/lib/part.sh k/n spec/a_spec.lua spec/b_spec.lua ...
set -u
part=${1:?usage: part.sh k/n file...}
shift
cd "$(dirname "$0")/../../.."
k=${part%/*} n=${part#*/}
for f in "$@"; do echo "$f"; done |
  awk 'FILENAME != "-" { t[$1] = $2; next } { print (($0 in t) ? t[$0] : 60), $0 }' tools/test-times.txt - |
  sort -k1,1nr -k2 |
  awk -v k="$k" -v n="$n" '{
    best = 1
    for (i = 2; i <= n; i++) if (load[i] < load[best]) best = i
    load[best] += $1
    if (best == k) print $2
  }'
