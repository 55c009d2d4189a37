# Two commands after a clone: `make demo` (devices + a copy round trip on the default backend) and
# `make test` (the whole suite). Both install what they need (scripts/setup.sh).
VENV ?= .venv
BIN := $(VENV)/bin
export VENV

.PHONY: setup demo test bench fuzz check lint clean

setup:
	@scripts/setup.sh

demo: setup
	$(BIN)/exo-gpu devices
	$(BIN)/exo-gpu roundtrip --size 64M

test:
	@MATURIN_FEATURES=fault-injection scripts/setup.sh
	@scripts/test.sh

bench: setup
	$(BIN)/python benchmarks/run_all.py

fuzz: setup
	EXO_VULKAN_VALIDATION=1 $(BIN)/python benchmarks/fuzz.py --steps 10000

check: setup
	$(BIN)/exo-gpu check host
	$(BIN)/exo-gpu check vulkan

clean:
	rm -rf $(VENV) dist rust/target
