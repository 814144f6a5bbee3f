# The two front-door commands. Each works on a fresh clone: it builds .venv, installs, runs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
QS_DIR ?= runs/quickstart

.PHONY: quickstart test install bench clean ffmpeg-libs

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(MAKE) --no-print-directory ffmpeg-libs
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	DS_BUILD_OPS=0 $(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# torchcodec (dev extra) loads the system FFmpeg shared libraries. When they are missing, install
# them if we can (root with apt-get), quietly; never fail: without them the torchcodec tests skip.
ffmpeg-libs:
	@if ldconfig -p 2>/dev/null | grep -q 'libavcodec\.so'; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg) >/dev/null 2>&1; \
	  then echo "ffmpeg-libs: installed the FFmpeg shared libraries (apt-get install ffmpeg) for torchcodec"; \
	  else echo "ffmpeg-libs: apt-get install ffmpeg failed; torchcodec tests will skip"; fi; \
	else echo "ffmpeg-libs: FFmpeg shared libraries missing and not root with apt-get; torchcodec tests will skip (apt-get install --no-install-recommends ffmpeg)"; fi

quickstart: $(STAMP)
	$(VENV)/bin/vssl quickstart --out $(QS_DIR)

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m benchmarks all --quick

clean:
	rm -rf $(VENV) runs
