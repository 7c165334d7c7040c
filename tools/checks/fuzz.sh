#!/bin/sh
# CI: both libFuzzer targets (URL/option parsing, reply handling), 20 s each
# from their committed seed corpora (make fuzz runs them longer).
cd "$(dirname "$0")/../.." && FUZZ_SECONDS=${FUZZ_SECONDS:-20} sh fuzz/run.sh
