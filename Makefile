# The two commands of the README:
#   make demo   set up .venv, generate the default data, train + test configs/demo.yaml, render centroids
#   make test   set up .venv, lint (ruff, configured in pyproject.toml), run the whole test suite (what .ci/run calls)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup system-libs demo test benchmark

setup: $(STAMP) system-libs

# Re-installs whenever pyproject.toml changes. torch is pinned in pyproject.toml (CPU wheel on a fresh
# Linux box with the PyPI index; GPU users install their CUDA build of the same version first).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Open3D needs libusb; its headless rendering (hidden-window Visualizer on an EGL context, Mesa llvmpipe)
# needs the EGL/GL libraries. Installed when missing and we are root with apt; otherwise a hint.
SYSTEM_LIBS := libusb-1.0-0 libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri
system-libs:
	@missing=$$(for p in $(SYSTEM_LIBS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || echo $$p; done); \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Open3D's system libraries: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else echo "note: for PNG rendering install $$missing (sudo apt-get install ...); .ply files are written regardless"; fi

demo: setup
	$(PY) -m app.demo

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q

benchmark: setup
	$(PY) -m benchmarks
