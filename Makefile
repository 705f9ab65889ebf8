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
#   make install    copy ./iawlb, doc/iawlb.1, the book and doc/iawlb.service
#                   under $(DESTDIR)$(PREFIX) (PREFIX is /usr/local unless given)
#   make uninstall  remove exactly the files that make install copied
#   make check-pages fail if a page inside a chapter is more than a third empty
#   make check-man  render doc/iawlb.1 with groff; fail on any warning
#   make fuzz       libFuzzer on the address and argument parsers, FUZZ_SECONDS (60) each
#   make soak       SOAK_SECONDS (600) of seeded random load, backends killed and
#                   restarted, every byte checked; SOAK_SEED (1) picks the mix
#   make soak-asan, make soak-tsan  the same under the sanitizers
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
            haproxy nginx-light libnginx-mod-stream pen wrk strace iproute2

.DELETE_ON_ERROR:
.PHONY: all check-pages check check-asan check-tsan check-all demo bench bench-quick profile deps clean doc

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
INTEGRATION := integration hostile ops edges

$(BUILD)/test_%: tests/test_%.cpp tests/harness.hpp tests/balancer.hpp
	$(CXX) $(TEST_FLAGS) $< -o $@ $(LDFLAGS) -lCatch2WithMain

# LD_PRELOADed by the edges suite into the balancer: operator new that fails, on
# demand, in the worker threads. Built without sanitizers: it forwards to malloc and free.
$(BUILD)/failnew.so: tests/fault/failnew.cpp
	$(CXX) -std=c++17 -Wall -Wextra -Werror -O2 -fPIC -shared $< -o $@

# Each suite appends its counts to $(BUILD)/results; tests/run-suite prints them.
check: $(BUILD)/iawlb $(BUILD)/test_unit $(addprefix $(BUILD)/test_,$(INTEGRATION)) $(BUILD)/failnew.so
	@rm -f $(BUILD)/results; rc=0; \
	  tests/run-suite $(BUILD)/results "unit$(if $(SUITE), ($(SUITE)))" $(BUILD)/test_unit || rc=1; \
	  for s in $(INTEGRATION); do \
	    echo "IAWLB=$(BUILD)/iawlb $(BUILD)/test_$$s"; \
	    IAWLB=$(BUILD)/iawlb IAWLB_FAILNEW=$(BUILD)/failnew.so tests/run-suite $(BUILD)/results "$$s$(if $(SUITE), ($(SUITE)))" \
	      $(BUILD)/test_$$s || rc=1; \
	  done; \
	  tests/run-suite --total $(BUILD)/results; exit $$rc

check-asan:
	$(MAKE) BUILD=build-asan OPT="-O1 -g" SAN=address,undefined SUITE=asan check

check-tsan:
	$(MAKE) BUILD=build-tsan CXX=clang++ OPT="-O1 -g" SAN=thread SUITE=tsan check

# Every suite runs even if an earlier one failed; the last line sums them all.
# The book, the man page, the fuzzers and each soak count as one test each.
CHECK_FUZZ_SECONDS ?= 20
CHECK_SOAK_SECONDS ?= 60
comma := ,
one = if $(MAKE) $(2); then r='1\t0'; else r='0\t1'; fi; printf "$(1)\t$$r\n" >> build/results-more

check-all:
	@mkdir -p build; rm -f build/results-more
	@$(call one,book (0 TeX warnings),doc)
	@$(call one,book pages (none inside a chapter more than a third empty),check-pages)
	@$(call one,man page (0 groff warnings),check-man)
	-$(MAKE) check
	-$(MAKE) check-asan
	-$(MAKE) check-tsan
	@$(call one,fuzz ($(CHECK_FUZZ_SECONDS) s per target),fuzz FUZZ_SECONDS=$(CHECK_FUZZ_SECONDS))
	@$(call one,soak ($(CHECK_SOAK_SECONDS) s),soak SOAK_SECONDS=$(CHECK_SOAK_SECONDS))
	@$(call one,soak (asan$(comma) $(CHECK_SOAK_SECONDS) s),soak-asan SOAK_SECONDS=$(CHECK_SOAK_SECONDS))
	@$(call one,soak (tsan$(comma) $(CHECK_SOAK_SECONDS) s),soak-tsan SOAK_SECONDS=$(CHECK_SOAK_SECONDS))
	@tests/run-suite --total build/results-more build/results build-asan/results build-tsan/results

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
	awk -f doc/index-filter.awk $(BUILD)/doc/iawlb.idx > $(BUILD)/doc/iawlb.idx.new \
	  && mv $(BUILD)/doc/iawlb.idx.new $(BUILD)/doc/iawlb.idx

# The figures are MetaPost programs in doc/figures.mp; mpost writes one
# figures-N.mps file per figure next to the TeX file that places them.
# figures.mp inputs doc/perfplot.mp (Figure 8, the performance chapter's bar
# chart), which inputs benchdata.mp, the data written from the cited run below.
$(BUILD)/doc/figures.stamp: doc/figures.mp doc/perfplot.mp $(BUILD)/doc/benchdata.mp
	@mkdir -p $(BUILD)/doc
	cp doc/figures.mp doc/perfplot.mp $(BUILD)/doc/
	cd $(BUILD)/doc && mpost -interaction=nonstopmode -halt-on-error figures.mp >/dev/null \
	  || { tail -20 figures.log; exit 1; }
	@touch $@

# The performance chapter's tables and figures are typeset from the runs named
# in bench/CITED, so that no number in it is typed by hand.
# bench/CITED names the run (line 1), the output of bench/profile.sh for this
# version (line 2) and for the version before splice (line 3).
BENCH_CITED := $(shell sed -n 1p bench/CITED)
PROFILE_CITED := $(shell sed -n '2,3p' bench/CITED)
$(BUILD)/doc/benchtable.tex: bench/table-to-tex.py bench/CITED $(BENCH_CITED)/report.md $(PROFILE_CITED)
	@mkdir -p $(BUILD)/doc
	python3 bench/table-to-tex.py $(BENCH_CITED)/report.md $(PROFILE_CITED) > $@

# plot-to-mp.py reads the report with table-to-tex.py's functions.
$(BUILD)/doc/benchdata.mp: bench/plot-to-mp.py bench/table-to-tex.py bench/CITED $(BENCH_CITED)/report.md
	@mkdir -p $(BUILD)/doc
	python3 bench/plot-to-mp.py $(BENCH_CITED)/report.md > $@

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

# check-pages fails if a page inside a chapter is more than a third empty
# (doc/page-fill.py says how it measures): the book's pages are full.
check-pages: doc/iawlb.pdf
	python3 doc/page-fill.py doc/iawlb.pdf $(BUILD)/doc/iawlb.toc

# ---------------------------------------------------------------- installing
# Where the files go is the book's section "Installing" (chapter Operations):
# the program, its manual page, the book and an example systemd unit, under
# $(PREFIX). DESTDIR puts the whole tree under another root, as packagers
# need; give make uninstall the same PREFIX and DESTDIR as make install.
# check-man has groff render the page with every warning enabled and fails
# if groff says anything at all on standard error (MANPAGE=FILE checks
# another copy of the page). It renders for the terminal and again for
# PostScript, because the terminal devices accept a font that does not exist.
PREFIX    ?= /usr/local
DESTDIR   ?=
INSTALLED := $(DESTDIR)$(PREFIX)/bin/iawlb $(DESTDIR)$(PREFIX)/share/man/man1/iawlb.1 \
             $(DESTDIR)$(PREFIX)/share/doc/iawlb/iawlb.pdf \
             $(DESTDIR)$(PREFIX)/share/doc/iawlb/iawlb.service
MANPAGE   := doc/iawlb.1
DEPS_DEB  += groff-base
.PHONY: install uninstall check-man

install: all doc/iawlb.1 doc/iawlb.service
	install -D -m 755 iawlb $(DESTDIR)$(PREFIX)/bin/iawlb
	install -D -m 644 doc/iawlb.1 $(DESTDIR)$(PREFIX)/share/man/man1/iawlb.1
	install -D -m 644 doc/iawlb.pdf $(DESTDIR)$(PREFIX)/share/doc/iawlb/iawlb.pdf
	install -D -m 644 doc/iawlb.service $(DESTDIR)$(PREFIX)/share/doc/iawlb/iawlb.service

uninstall:
	rm -f $(INSTALLED)

check-man: $(MANPAGE)
	@w=$$( { groff -man -Tutf8 -ww -z $(MANPAGE) && groff -man -Tps -ww -z $(MANPAGE); } 2>&1 ) \
	  || w="$$w (groff failed)"; \
	  if [ -n "$$w" ]; then printf '%s\n' "$$w"; echo "$(MANPAGE): groff warnings or errors"; exit 1; fi
	@echo "$(MANPAGE): groff -man -ww -Tutf8 and -Tps: no warnings"

# ---------------------------------------------------------------- fuzzing
# Two libFuzzer targets, built with clang++ under AddressSanitizer and
# UndefinedBehaviorSanitizer in $(FUZZ_DIR): tests/fuzz/fuzz_endpoint.cpp (one
# argument: addresses, ports, weights, durations, counts) and
# tests/fuzz/fuzz_args.cpp (the whole of parse_args). make fuzz replays
# tests/fuzz/regressions/TARGET-*, then runs each target, one process (no
# -fork), for FUZZ_SECONDS on a fresh copy of its seed corpus
# tests/fuzz/corpus-TARGET/ in $(FUZZ_DIR) (the seeds are never written), and
# ends with each target's exec/s and coverage. A crash or a broken property
# stops that target, leaves the input in $(FUZZ_DIR)/crash-* and fails make;
# $(FUZZ_DIR)/fuzz_TARGET FILE replays it, -minimize_crash=1 -runs=100000
# shrinks it. The targets link a copy of iawlb.o in which every call to a
# function named in tests/fuzz/fuzz.hpp (printing, files, sockets, signals,
# exit) goes to a trap, so that a parser that prints or exits is caught too.
FUZZ_SECONDS ?= 60
FUZZ_DIR     := build-fuzz
FUZZ_RUNS    := endpoint:256 args:1024
FUZZ_BINS    := $(FUZZ_DIR)/fuzz_endpoint $(FUZZ_DIR)/fuzz_args
FUZZ_CXX     := clang++ -std=c++17 -g -O1 -Wall -Wextra -Werror -pthread -fno-omit-frame-pointer \
                -fno-sanitize-recover=all
.PHONY: fuzz fuzz-clean

# The tangle rule above, run with BUILD=$(FUZZ_DIR); the ifneq keeps that
# sub-make from seeing these rules.
ifneq ($(BUILD),$(FUZZ_DIR))
$(FUZZ_DIR)/tangle.stamp: $(WEBS) Makefile
	@$(MAKE) --no-print-directory BUILD=$(FUZZ_DIR) $@

$(FUZZ_DIR)/iawlb.cpp $(FUZZ_DIR)/iawlb.hpp $(FUZZ_DIR)/SyncedList.hpp: $(FUZZ_DIR)/tangle.stamp ;

$(FUZZ_DIR)/iawlb.o: $(FUZZ_DIR)/iawlb.cpp $(FUZZ_DIR)/iawlb.hpp $(FUZZ_DIR)/SyncedList.hpp
	$(FUZZ_CXX) -fsanitize=fuzzer-no-link,address,undefined -c $< -o $@

$(FUZZ_DIR)/iawlb-guarded.o: $(FUZZ_DIR)/iawlb.o tests/fuzz/fuzz.hpp
	objcopy $$(sed -n 's/^IAWLB_FUZZ_GUARD(\([A-Za-z0-9_]*\))$$/--redefine-sym \1=iawlb_fuzz_guard_\1/p' \
	  tests/fuzz/fuzz.hpp) $< $@

$(FUZZ_BINS): $(FUZZ_DIR)/fuzz_%: tests/fuzz/fuzz_%.cpp tests/fuzz/fuzz.hpp $(FUZZ_DIR)/iawlb-guarded.o \
              $(FUZZ_DIR)/iawlb.hpp $(FUZZ_DIR)/SyncedList.hpp
	$(FUZZ_CXX) -fsanitize=fuzzer,address,undefined -I$(FUZZ_DIR) $< $(FUZZ_DIR)/iawlb-guarded.o -o $@

fuzz: $(FUZZ_BINS)
	@rc=0; sum=""; for run in $(FUZZ_RUNS); do \
	  t=$${run%:*}; len=$${run#*:}; bin=$(FUZZ_DIR)/fuzz_$$t; log=$(FUZZ_DIR)/fuzz_$$t.log; \
	  regs=$$(ls tests/fuzz/regressions/$$t-* 2>/dev/null); \
	  if [ -n "$$regs" ] && ! $$bin $$regs > $(FUZZ_DIR)/regressions-$$t.log 2>&1; then \
	    tail -40 $(FUZZ_DIR)/regressions-$$t.log; rc=1; \
	    sum="$$sum$$bin: a regression input fails, see $(FUZZ_DIR)/regressions-$$t.log\n"; continue; fi; \
	  rm -rf $(FUZZ_DIR)/corpus-$$t && cp -R tests/fuzz/corpus-$$t $(FUZZ_DIR)/corpus-$$t || exit 1; \
	  echo "$$bin: $(FUZZ_SECONDS) s, -max_len=$$len, log in $$log"; \
	  if $$bin -max_total_time=$(FUZZ_SECONDS) -max_len=$$len -timeout=10 -print_final_stats=1 \
	      -artifact_prefix=$(FUZZ_DIR)/ $(FUZZ_DIR)/corpus-$$t > $$log 2>&1; then \
	    sum="$$sum$$bin: $$(sed -n 's/^#\([0-9]*\)[[:space:]]*DONE *cov: \([0-9]*\) ft: \([0-9]*\) corp: \([0-9]*\)\/.* exec\/s: \([0-9]*\).*/\1 runs, exec\/s: \5, cov: \2, ft: \3, corpus: \4 inputs/p' $$log)\n"; \
	  else \
	    rc=1; grep -B2 -A40 -m1 -E '^==[0-9]+==|fuzz property violated|runtime error|libFuzzer: ' $$log; \
	    sum="$$sum$$bin: FAILED, input: $$(sed -n 's/.*Test unit written to //p' $$log)\n"; fi; \
	done; printf "$$sum"; exit $$rc
endif

# make clean removes $(FUZZ_DIR) as well.
clean: fuzz-clean
fuzz-clean:
	rm -rf $(FUZZ_DIR)

# ---------------------------------------------------------------- soak
# tests/soak.cpp runs the balancer for SOAK_SECONDS (CI: 60) in front of
# backends that are killed and restarted at random moments, under a mix of
# sessions drawn from SOAK_SEED: short and long connections, uploads and
# downloads up to 32 MiB, echoes, half-closes both ways, client resets,
# clients that stop reading, servers that speak first. Every byte is checked.
# It ends with a report and "soak: PASS" or "soak: FAIL (why)": no corrupted
# or lost byte, no error while a healthy destination existed, and no growth
# of the balancer's descriptors, threads or RSS. It is built with CXXFLAGS,
# so soak-asan and soak-tsan run it in the sanitizer builds.
SOAK_SECONDS ?= 600
SOAK_SEED    ?= 1
.PHONY: soak soak-asan soak-tsan

$(BUILD)/soak: tests/soak.cpp tests/harness.hpp
	@mkdir -p $(BUILD)
	$(CXX) $(CXXFLAGS) tests/soak.cpp -o $@ $(LDFLAGS)

soak: $(BUILD)/iawlb $(BUILD)/soak
	$(BUILD)/soak --seconds $(SOAK_SECONDS) --seed $(SOAK_SEED) --iawlb $(BUILD)/iawlb

soak-asan:
	$(MAKE) BUILD=build-asan OPT="-O1 -g" SAN=address,undefined soak

soak-tsan:
	$(MAKE) BUILD=build-tsan CXX=clang++ OPT="-O1 -g" SAN=thread soak

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
