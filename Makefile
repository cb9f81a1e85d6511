# The two commands of the README:
#   make demo   set up .venv, generate the default data, train + test configs/demo.yaml, render centroids
#   make test   set up .venv and run the whole test suite (what .ci/run calls)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export WANDB_MODE ?= offline

.PHONY: setup system-libs demo test benchmark

setup: $(STAMP) system-libs

# Re-installs whenever pyproject.toml changes. torch is pinned in pyproject.toml (CPU wheel on a fresh
# Linux box with the PyPI index; GPU users install their CUDA build of the same version first).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Open3D's headless renderer (Filament on llvmpipe) needs these Debian libraries.
system-libs:
	@if ldconfig -p | grep -q libvulkan.so.1 && ldconfig -p | grep -q libusb-1.0.so.0 && ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Open3D's headless rendering libraries (libusb-1.0-0 libvulkan1 mesa-vulkan-drivers)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0 libvulkan1 mesa-vulkan-drivers >/dev/null; \
	else echo "note: for PNG rendering install libusb-1.0-0 libvulkan1 mesa-vulkan-drivers (sudo apt-get install ...); .ply files are written regardless"; fi

demo: setup
	$(PY) -m app.demo

test: setup
	$(PY) -m pytest -q

benchmark: setup
	$(PY) -m app.benchmark
