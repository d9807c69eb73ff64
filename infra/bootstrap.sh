#!/usr/bin/env bash
# Sets up everything Tally needs on a fresh machine; fast and harmless when done.
#   - system packages (JDK and Maven for the Kafka broker), via apt when missing
#   - .venv with Tally and its test dependencies (re-installed when pyproject.toml changes)
#   - the Kafka broker's jars from Maven Central (infra/kafka/pom.xml)
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v java >/dev/null 2>&1 || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need_apt+=(maven)
# chromium: the tracker's real-browser test (tests/test_tracker_browser.py) needs it.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# wrk: the load generator of bench/collector (small; installed so the bench runs anywhere).
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: installing ${need_apt[*]} with apt-get"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $PY"
  "$PY" -m venv .venv
fi
stamp=.venv/.tally-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "bootstrap: installing Tally and its dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test,tansu]"
  echo "$want" > "$stamp"
fi

.venv/bin/tally setup >/dev/null
echo "bootstrap: ready (.venv, Kafka jars)"
