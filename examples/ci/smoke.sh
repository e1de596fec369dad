#!/usr/bin/env bash
# Smoke-test every environment of a manifest in a plain shell CI (Jenkins, GitLab shell runners,
# Buildkite, cron): build what changed, check everything, leave a JUnit report.
#
#   examples/ci/smoke.sh [MANIFEST]          MANIFEST defaults to environments.yaml
#
# Settings, as environment variables:
#   ENVRUNNER_HOME  where builds live between runs: point it at the CI's persistent cache folder.
#                   Builds are keyed by their content, so an unchanged environment is reused and a
#                   changed one is built beside it.
#   SMOKE_REPORT    the JUnit XML file to write (default: reports/envrunner-smoke.xml)
#   SMOKE_JOBS      environments checked at once (default: 2)
#   SMOKE_LOCKED    1 (default): build from the committed lock files (envrunner lock) and fail
#                   when one is missing or out of date with the manifest; 0: resolve when so
#   SMOKE_GC        1: afterwards, remove builds this manifest no longer asks for (a cache used by
#                   one project only; leave it unset when several projects share ENVRUNNER_HOME)
#   ENVRUNNER       the envrunner command (default: envrunner)
#
# Exit code: envrunner smoke's (0 every check passed, 1 one failed, 2 bad input).
set -euo pipefail

manifest=${1:-environments.yaml}
report=${SMOKE_REPORT:-reports/envrunner-smoke.xml}
jobs=${SMOKE_JOBS:-2}
locked=()
if [ "${SMOKE_LOCKED:-1}" = 1 ]; then
    locked=(--locked)
fi
envrunner=${ENVRUNNER:-envrunner}

mkdir -p "$(dirname "$report")"
"$envrunner" list --manifest "$manifest"
echo
status=0
"$envrunner" smoke "${locked[@]}" --manifest "$manifest" --jobs "$jobs" --junit-xml "$report" || status=$?
echo "JUnit report: $report"
if [ "${SMOKE_GC:-0}" = 1 ]; then
    "$envrunner" gc --manifest "$manifest" --delete
fi
exit "$status"
