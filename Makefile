# The two commands that matter: `make up` (run the local stack with demo traffic)
# and `make test` (run the whole suite, integration tests included; the heavy fault-injection
# scenarios, marked `chaos`, run with `make chaos`).
.PHONY: setup up down status test chaos lint docs bench

setup:
	@bash infra/bootstrap.sh

up: setup
	@.venv/bin/tally up
	@.venv/bin/tally demo --beacons 30
	@sleep 3
	@echo
	@echo "Tally is running. Rows so far:"
	@.venv/bin/tally query "SELECT site, path, count() AS pageviews, uniqExact(visitor_id) AS visitors FROM pageviews FINAL GROUP BY site, path ORDER BY pageviews DESC"
	@echo
	@echo "Send a beacon:  curl -A 'Mozilla/5.0 (X11; Linux x86_64) Firefox/127.0' -H 'Content-Type: application/json' -d '{\"site\":\"localhost\",\"path\":\"/hello\"}' http://127.0.0.1:8000/api/v1/collect"
	@echo "                (a browser User-Agent: curl's own is classified as a bot and dropped, with a counted reason)"
	@echo "Query:          .venv/bin/tally query \"SELECT * FROM pageviews ORDER BY received_at DESC LIMIT 10\""
	@echo "Status / stop:  .venv/bin/tally status   /   .venv/bin/tally down"
	@echo
	@.venv/bin/tally user login-info

down:
	@.venv/bin/tally down

status:
	@.venv/bin/tally status

test: setup
	@.venv/bin/ruff check .
	@.venv/bin/python -m pytest -m "not chaos"

chaos: setup
	@.venv/bin/python -m pytest -m chaos -s

lint: setup
	@.venv/bin/ruff check .

docs: setup
	@.venv/bin/tally config docs
