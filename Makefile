# The two commands of the README. Both set up a fresh machine first.
.PHONY: run test setup

setup:
	bash .ci/setup

run: setup
	.venv/bin/burrow relay

test:
	bash .ci/test
