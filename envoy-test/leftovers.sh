#!/usr/bin/env bash
# What a run leaves behind: processes started from this clone (their working
# directory or command line is inside it) and client-ip-* directories in the
# temp dir.
#
#   envoy-test/leftovers.sh snapshot FILE   record what is there now
#   envoy-test/leftovers.sh check FILE      fail, naming them, on any process
#                                           or directory not in FILE
#
# A process is known by its pid and start time, so a reused pid is new.
set -euo pipefail

usage() { echo "usage: $0 snapshot|check FILE" >&2; exit 2; }
[ $# -eq 2 ] || usage
mode=$1 file=$2
clone=$(cd "$(dirname "$0")/.." && pwd -P)
tmp=${TMPDIR:-/tmp}
tmp=${tmp%/}

# Only builtins while scanning, from /, so that nothing this script runs
# looks like a process of the clone; the script itself is left out by pid.
scan() {
  local entry pid stat rest fields start dir args
  for entry in /proc/[0-9]*; do
    pid=${entry#/proc/}
    [ "$pid" != $$ ] && [ "$pid" != "$BASHPID" ] || continue
    { read -r stat < "$entry/stat"; } 2>/dev/null || continue
    rest=${stat##*) }
    read -r -a fields <<< "$rest"
    start=${fields[19]:-0}
    dir=
    if cd -P "$entry/cwd" 2>/dev/null; then dir=$PWD; fi
    cd /
    args=()
    { mapfile -d '' args < "$entry/cmdline"; } 2>/dev/null || true
    if [ "$dir" = "$clone" ] || [[ $dir == "$clone"/* ]] || [[ " ${args[*]} " == *"$clone"* ]]; then
      echo "process $pid:$start"
    fi
  done
  shopt -s nullglob
  for dir in "$tmp"/client-ip-*; do
    echo "dir $dir"
  done
}

cd /
case $mode in
  snapshot)
    scan > "$file"
    ;;
  check)
    [ -f "$file" ] || { echo "leftovers: no snapshot at $file" >&2; exit 2; }
    declare -A known=()
    while read -r line; do known[$line]=1; done < "$file"
    pids=() dirs=()
    while read -r kind what; do
      [ -z "${known["$kind $what"]:-}" ] || continue
      if [ "$kind" = process ]; then pids+=("${what%%:*}"); else dirs+=("$what"); fi
    done < <(scan)
    if [ ${#pids[@]} -eq 0 ] && [ ${#dirs[@]} -eq 0 ]; then
      echo "leftovers: none"
      exit 0
    fi
    if [ ${#pids[@]} -gt 0 ]; then
      echo "leftovers: still running, started from $clone (${#pids[@]}):" >&2
      ps -o pid,ppid,pgid,etime,args -p "$(IFS=,; echo "${pids[*]}")" >&2 || true
    fi
    if [ ${#dirs[@]} -gt 0 ]; then
      echo "leftovers: new temporary directories (${#dirs[@]}):" >&2
      printf '  %s\n' "${dirs[@]}" >&2
    fi
    exit 1
    ;;
  *) usage ;;
esac
