# Two commands after a clone: `make demo` (devices + a copy round trip on the default backend) and
# `make test` (the whole suite). Both install what they need (scripts/setup.sh).
VENV ?= .venv
BIN := $(VENV)/bin
export VENV

.PHONY: setup demo test wheels matrix matrix-quick bench fuzz check lint clean

setup:
	@scripts/setup.sh

demo: setup
	$(BIN)/exo-gpu devices
	$(BIN)/exo-gpu roundtrip --size 64M

test:
	@MATURIN_FEATURES=fault-injection EXTRAS=interop-tests scripts/setup.sh
	@scripts/test.sh

# Both distributions as manylinux wheels (glibc >= 2.17/2.28, checked by auditwheel) + sdists, in dist/.
wheels:
	@[ -x $(BIN)/python ] || scripts/setup.sh
	@scripts/wheels.sh

# The built wheels on Python 3.10-3.13 (nox): `matrix` runs core + Vulkan smoke tests, `matrix-quick`
# the quick part CI runs.
matrix: wheels
	@$(BIN)/python -m pip install -q --disable-pip-version-check nox
	$(BIN)/nox -s tests

matrix-quick: wheels
	@$(BIN)/python -m pip install -q --disable-pip-version-check nox
	$(BIN)/nox -s quick

bench: setup
	$(BIN)/python benchmarks/transfer_pipeline.py
	$(BIN)/python benchmarks/load_weights.py

fuzz: setup
	EXO_VULKAN_VALIDATION=1 $(BIN)/python benchmarks/fuzz.py --steps 10000

check: setup
	$(BIN)/exo-gpu check host
	$(BIN)/exo-gpu check vulkan

clean:
	rm -rf $(VENV) dist rust/target .nox
