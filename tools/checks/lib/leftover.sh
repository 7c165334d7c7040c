#!/bin/sh
# What a test run left behind in its private temporary directory:
#
#   sh tools/checks/lib/leftover.sh <dir> <what ran>
#
# <dir> is the TMPDIR the run was given (and nothing else used).  Lists the
# files and directories left in it, and the processes still running that
# carry <dir> in their environment (every process the run started inherits
# TMPDIR=<dir>...) or work in it (a redis-server overwrites its environment
# with its process title, but works in its --dir, which the harness makes
# in <dir>); those are found by reading /proc/<pid>/environ and cwd, never
# by name, and stopped by that pid so that one failure does not leave them
# for the next run.  Then removes <dir>.  Exit status 1 when anything was
# left.  Run it without <dir> in its own environment (env -u TMPDIR), or it
# would find itself.
set -u
dir=${1:?usage: leftover.sh <dir> <what ran>}
what=${2:-the run}
left=0

procs=""
for env in /proc/[0-9]*/environ; do
  pid=${env#/proc/}
  pid=${pid%/environ}
  [ "$pid" = "$$" ] && continue
  case $(readlink "/proc/$pid/cwd" 2>/dev/null) in
  "$dir"/*) ;;
  *) grep -qzF "=$dir" "$env" 2>/dev/null || continue ;;
  esac
  # one that ended meanwhile (or a zombie) has nothing to say
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | sed 's/ *$//')
  [ -n "$cmd" ] || continue
  echo "leftover: $what left process $pid running: $cmd"
  procs="$procs $pid"
  left=1
done
for pid in $procs; do kill -TERM "$pid" 2>/dev/null; kill -CONT "$pid" 2>/dev/null; done

if [ -d "$dir" ]; then
  n=$(ls -A "$dir" | wc -l)
  if [ "$n" -gt 0 ]; then
    echo "leftover: $what left $n entries in its TMPDIR: $(ls -A "$dir" | head -n 8 | tr '\n' ' ')"
    # what is inside them, with sizes and times: a directory left alone
    # says little (seen once: a spec's whole root, its files unknown)
    find "$dir" -mindepth 2 -printf '  %P %s bytes %TT\n' 2>/dev/null | head -n 20
    left=1
  fi
  rm -rf "$dir"
fi
exit $left
