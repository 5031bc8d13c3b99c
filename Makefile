# The two commands of the README. Both set up a fresh machine first.
.PHONY: run test setup

setup:
	bash .ci/setup

run: setup
	.venv/bin/burrow up

test:
	bash .ci/test
