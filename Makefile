# iawlb: one literate source, two products.
#   make            tangle and compile ./iawlb, weave doc/iawlb.pdf
#   make check      build and run the unit and integration tests
#   make check-asan the same under AddressSanitizer + UndefinedBehaviorSanitizer
#   make check-tsan the same under ThreadSanitizer (built with clang++)
#   make check-all  all three, ending with one line "N passed, N failed"
#   make demo       the balancer in front of three small web servers
#   make bench      iawlb against HAProxy, nginx stream and pen (about 6 min)
#   make bench-quick  the same in one short round (under 1 min)
#   make profile    where the time goes, per request (under 1 min)
#   make deps       install the Debian packages that all of this needs (as root)
#   make clean      remove every generated file
#
# Tangled sources, objects and TeX output live in $(BUILD); nothing generated
# is written next to the .w files except ./iawlb and doc/iawlb.pdf.

BUILD    ?= build
CXX      ?= g++
OPT      ?= -O2 -g
SAN      ?=
CXXFLAGS := -std=c++17 -Wall -Wextra -Werror -pthread $(OPT)
LDFLAGS  := -pthread
ifneq ($(SAN),)
CXXFLAGS += -fsanitize=$(SAN) -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS  += -fsanitize=$(SAN)
endif

WEBS     := iawlb.w SyncedList.w
TANGLED  := $(BUILD)/iawlb.cpp $(BUILD)/main.cpp $(BUILD)/iawlb.hpp $(BUILD)/SyncedList.hpp
DEPS_DEB := make g++ clang netcat-openbsd libclang-rt-14-dev texlive-binaries texlive-base \
            texlive-extra-utils texlive-metapost texlive-latex-base catch2 \
            python3 curl redis-server redis-tools util-linux poppler-utils \
            haproxy nginx-light libnginx-mod-stream pen wrk strace

.DELETE_ON_ERROR:
.PHONY: all check check-asan check-tsan check-all demo bench bench-quick profile deps clean doc

all: iawlb doc/iawlb.pdf

# ---------------------------------------------------------------- tangling
# ctangle writes every output file into the current directory, so it runs
# inside $(BUILD) with absolute paths (the #line directives then point into
# the .w files). +c keeps the timestamp of an output that did not change, so
# a change in the prose alone does not recompile; the stamp records the run.
#
# ctangle 4.7 writes a wrong file name in the #line directives of a web
# included with @i (an unrelated identifier instead of SyncedList.w). So the
# book includes SyncedList.w, but the tangle does not: a change file drops the
# @i line from iawlb.w, and SyncedList.w is tangled on its own.
$(BUILD)/tangle.stamp: $(WEBS) Makefile
	@mkdir -p $(BUILD)
	printf '@x\n@i SyncedList.w\n@y\n@z\n' > $(BUILD)/no-include.ch
	cd $(BUILD) && ctangle +c $(CURDIR)/iawlb.w no-include.ch iawlb.cpp
	cd $(BUILD) && ctangle +c $(CURDIR)/SyncedList.w - SyncedList.c
	@touch $@

$(TANGLED): $(BUILD)/tangle.stamp ;

# ---------------------------------------------------------------- compiling
$(BUILD)/%.o: $(BUILD)/%.cpp $(BUILD)/iawlb.hpp $(BUILD)/SyncedList.hpp
	$(CXX) $(CXXFLAGS) -c $< -o $@

$(BUILD)/iawlb: $(BUILD)/iawlb.o $(BUILD)/main.o
	$(CXX) $(LDFLAGS) $^ -o $@

# A rename replaces the file even while an older ./iawlb is running.
iawlb: $(BUILD)/iawlb
	cp $< $@.tmp && mv -f $@.tmp $@

# ---------------------------------------------------------------- tests
TEST_FLAGS := $(CXXFLAGS) -I$(BUILD) -Itests

$(BUILD)/test_unit: tests/test_unit.cpp $(BUILD)/iawlb.o $(BUILD)/iawlb.hpp $(BUILD)/SyncedList.hpp
	$(CXX) $(TEST_FLAGS) tests/test_unit.cpp $(BUILD)/iawlb.o -o $@ $(LDFLAGS) -lCatch2WithMain

# The integration suites start the real binary; each is tests/test_NAME.cpp.
INTEGRATION := integration

$(BUILD)/test_%: tests/test_%.cpp tests/harness.hpp tests/balancer.hpp
	$(CXX) $(TEST_FLAGS) $< -o $@ $(LDFLAGS) -lCatch2WithMain

# Each suite appends its counts to $(BUILD)/results; tests/run-suite prints them.
check: $(BUILD)/iawlb $(BUILD)/test_unit $(addprefix $(BUILD)/test_,$(INTEGRATION))
	@rm -f $(BUILD)/results; rc=0; \
	  tests/run-suite $(BUILD)/results "unit$(if $(SUITE), ($(SUITE)))" $(BUILD)/test_unit || rc=1; \
	  for s in $(INTEGRATION); do \
	    echo "IAWLB=$(BUILD)/iawlb $(BUILD)/test_$$s"; \
	    IAWLB=$(BUILD)/iawlb tests/run-suite $(BUILD)/results "$$s$(if $(SUITE), ($(SUITE)))" \
	      $(BUILD)/test_$$s || rc=1; \
	  done; \
	  tests/run-suite --total $(BUILD)/results; exit $$rc

check-asan:
	$(MAKE) BUILD=build-asan OPT="-O1 -g" SAN=address,undefined SUITE=asan check

check-tsan:
	$(MAKE) BUILD=build-tsan CXX=clang++ OPT="-O1 -g" SAN=thread SUITE=tsan check

# Every suite runs even if an earlier one failed; the last line sums them all.
check-all:
	@mkdir -p build
	@if $(MAKE) doc; then r='1\t0'; else r='0\t1'; fi; \
	  printf "book (0 TeX warnings)\t$$r\n" > build/results-book
	-$(MAKE) check
	-$(MAKE) check-asan
	-$(MAKE) check-tsan
	@tests/run-suite --total build/results-book build/results build-asan/results build-tsan/results

# ---------------------------------------------------------------- the book
# cweave exits 5 on harmless warnings; 10 and more are errors. pdftex runs
# twice (contents and links). Any overfull or underfull box, or any TeX
# warning, fails the build, so that the book cannot regress unnoticed.
doc/iawlb.pdf: $(BUILD)/doc/iawlb.pdf
	@mkdir -p doc
	cp $< $@

$(BUILD)/doc/iawlb.tex: $(WEBS)
	@mkdir -p $(BUILD)/doc
	cd $(BUILD)/doc && CWEBINPUTS=$(CURDIR) cweave $(CURDIR)/iawlb.w - iawlb.tex; \
	  rc=$$?; if [ $$rc -ge 10 ]; then exit $$rc; fi

# The figures are MetaPost programs in doc/figures.mp; mpost writes one
# figures-N.mps file per figure next to the TeX file that places them.
$(BUILD)/doc/figures.stamp: doc/figures.mp
	@mkdir -p $(BUILD)/doc
	cp doc/figures.mp $(BUILD)/doc/figures.mp
	cd $(BUILD)/doc && mpost -interaction=nonstopmode -halt-on-error figures.mp >/dev/null \
	  || { tail -20 figures.log; exit 1; }
	@touch $@

# The performance chapter's table is typeset from the report of the run named
# in bench/CITED, so that no number in it is typed by hand.
BENCH_CITED := $(shell cat bench/CITED)
$(BUILD)/doc/benchtable.tex: bench/table-to-tex.py bench/CITED $(BENCH_CITED)/report.md
	@mkdir -p $(BUILD)/doc
	python3 bench/table-to-tex.py $(BENCH_CITED)/report.md > $@

$(BUILD)/doc/iawlb.pdf: $(BUILD)/doc/iawlb.tex $(BUILD)/doc/figures.stamp $(BUILD)/doc/benchtable.tex \
                        doc/seed-names.txt
	cd $(BUILD)/doc && rm -f iawlb.toc && pdftex -interaction=nonstopmode -halt-on-error iawlb.tex >/dev/null \
	  && pdftex -interaction=nonstopmode -halt-on-error iawlb.tex >/dev/null \
	  || { tail -30 iawlb.log; exit 1; }
	@missing=""; for n in $$(grep -v '^#' doc/seed-names.txt); do \
	  e=$$(printf '%s' "$$n" | sed 's/_/\\\\_/g'); \
	  grep -q "{$$e}" $(BUILD)/doc/iawlb.idx || missing="$$missing $$n"; done; \
	  if [ -n "$$missing" ]; then echo "seed names missing from the index:$$missing"; rm -f $@; exit 1; fi
	@bad=$$(grep -cE '^(Overfull|Underfull) \\[hv]box|Warning' $(BUILD)/doc/iawlb.log); \
	  if [ $$bad -gt 0 ]; then grep -A3 -E '^(Overfull|Underfull) \\[hv]box|Warning' $(BUILD)/doc/iawlb.log; \
	  echo "$(BUILD)/doc/iawlb.log: $$bad bad boxes or warnings"; rm -f $@; exit 1; fi

doc: doc/iawlb.pdf

# ---------------------------------------------------------------- the rest
demo: all
	sh tests/demo.sh

# The benchmark (bench/run.py) says which packages it lacks and installs nothing.
bench: iawlb
	python3 bench/run.py

bench-quick: iawlb
	python3 bench/run.py --quick

# Segments, CPU time and system calls per request: direct, iawlb and HAProxy.
profile: iawlb
	sh bench/profile.sh

deps:
	apt-get install -y $(DEPS_DEB)

clean:
	rm -rf build build-asan build-tsan iawlb doc/iawlb.pdf
