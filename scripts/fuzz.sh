#!/usr/bin/env bash
# `make fuzz`: every cargo-fuzz target under fuzz/ for FUZZ_SECONDS (default 60) each, on
# libFuzzer with AddressSanitizer. The corpus grows in fuzz/corpus/<target> (seeded from
# fuzz/seeds/<target>, minimized after each run, committed); a crash leaves its reproducer in
# fuzz/artifacts/<target>/ and fails the run. Results go to the fuzz section of
# docs/reliability.md.
set -euo pipefail
cd "$(dirname "$0")/.."
EACH=${FUZZ_SECONDS:-60}
TARGETS=${FUZZ_TARGETS:-}
CARGO_FUZZ=$PWD/.tools/bin/cargo-fuzz
# cargo fuzz passes -Z flags (sanitizer, coverage instrumentation); the project's pinned stable
# toolchain accepts them this way, so no nightly toolchain is needed.
export RUSTC_BOOTSTRAP=1
LOGS=$PWD/.bench/fuzz
mkdir -p "$LOGS"
cd fuzz
[ -n "$TARGETS" ] || TARGETS=$("$CARGO_FUZZ" list)
"$CARGO_FUZZ" build -O
rows=()
crashed=0
for t in $TARGETS; do
  mkdir -p "corpus/$t" "artifacts/$t"
  before=$(find "artifacts/$t" -type f | wc -l)
  echo "fuzzing $t for ${EACH}s"
  status=0
  "$CARGO_FUZZ" run -O "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$EACH" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$LOGS/$t.log" 2>&1 || status=$?
  execs=$(grep -m1 'stat::number_of_executed_units' "$LOGS/$t.log" | awk '{print $2}')
  cov=$(grep -E '^#[0-9]+.*cov:' "$LOGS/$t.log" | tail -1 | sed -E 's/.*cov: ([0-9]+).*/\1/')
  found=$(($(find "artifacts/$t" -type f | wc -l) - before))
  if [ "$status" -ne 0 ] || [ "$found" -gt 0 ]; then
    crashed=1
    echo "  $t: crash (exit $status), reproducer in fuzz/artifacts/$t/; log $LOGS/$t.log"
  fi
  "$CARGO_FUZZ" cmin -O "$t" "corpus/$t" >"$LOGS/$t.cmin.log" 2>&1 || true
  size=$(find "corpus/$t" -type f | wc -l)
  echo "  $t: ${execs:-?} executions, coverage ${cov:-?}, corpus $size, new crashes $found"
  rows+=("| \`$t\` | ${EACH} | ${execs:-?} | ${cov:-?} | $size | $found |")
done
cd ..
python3 - "$EACH" "${rows[@]}" <<'PY'
import sys
from pathlib import Path
each, rows = sys.argv[1], sys.argv[2:]
section = [
    "<!-- fuzz:begin (written by scripts/fuzz.sh) -->",
    f"`make fuzz` (FUZZ_SECONDS={each}) on a 2-core shared machine: libFuzzer with AddressSanitizer,",
    "one target after another, corpus minimized after each run and committed under fuzz/corpus/.",
    "",
    "| target | seconds | executions | coverage (edges) | corpus files | new crashes |",
    "|---|---|---|---|---|---|",
    *rows,
    "<!-- fuzz:end -->",
]
doc = Path("docs/reliability.md")
text = doc.read_text()
head, rest = text.split("<!-- fuzz:begin", 1)
tail = rest.split("<!-- fuzz:end -->", 1)[1]
doc.write_text(head + "\n".join(section) + tail)
print("\n".join(section))
PY
exit "$crashed"
