# The two commands a new user needs (see README.md):
#   make image   build the default x86_64 node image into out/
#   make test    run the whole test suite (unit, integration, QEMU boots)
# Both install missing Debian packages first (root).

PROFILE ?= profiles/k8s-1.36-x86_64.toml
# Passed to `nodeimage lock` and `nodeimage build`, e.g. --registry-mirror registry.k8s.io=http://10.0.0.5:5000
LOCK_ARGS ?=
BUILD_ARGS ?=
CARGO ?= cargo
# Where cargo builds (CARGO_TARGET_DIR when set, as .ci/run sets it).
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)

.PHONY: image test deps bins lint check-deps e2e e2e-ha bench-boot

deps:
	.ci/install-deps

bins:
	$(CARGO) build --release --workspace --bins

# Like cargo without --locked: resolve image tags to digests when the lock file is missing
# or stale, then build (which itself refuses a stale lock).
image: deps bins
	$(TARGET_DIR)/release/nodeimage lock --check $(PROFILE) || $(TARGET_DIR)/release/nodeimage lock $(PROFILE) $(LOCK_ARGS)
	$(TARGET_DIR)/release/nodeimage build $(PROFILE) $(LOCK_ARGS) $(BUILD_ARGS)

# Compile, unit and integration tests, then the QEMU boots; each phase timed.
test: deps
	CARGO=$(CARGO) .ci/test-suite

# rustfmt, clippy with -D warnings, no unused dependencies (cargo-machete), shellcheck
# on every shell script.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) machete
	.ci/lint-shell

# The two-node Kubernetes cluster under QEMU alone (upstream built from Go modules; part
# of `make test` too; about 14 min under TCG with warm caches, 24 min with a cold Go
# build), and the three-master scenario, which is not in `make test` (docs/testing.md).
e2e: deps bins
	CI=true $(CARGO) test --release -p qemu-tests --test k8s_e2e two_nodes -- --nocapture

e2e-ha: deps bins
	CI=true $(CARGO) test --release -p qemu-tests --test k8s_e2e three_masters -- --ignored --nocapture

# The test image booted from its disk (UEFI) and over the network (iPXE), one after the
# other in one run: power-on to `firstboot: ok` for each (the QEMU tests print them).
bench-boot: deps bins
	CI=true $(CARGO) test --release -p qemu-tests --test x86_64_boot first_boot_then_reboot -- --nocapture >$(TARGET_DIR)/bench-boot-disk.log 2>&1; s=$$?; grep -E 'firstboot: ok|test result' $(TARGET_DIR)/bench-boot-disk.log; exit $$s
	CI=true $(CARGO) test --release -p qemu-tests --test pxe_boot netboot_reaches_firstboot_ok -- --nocapture >$(TARGET_DIR)/bench-boot-pxe.log 2>&1; s=$$?; grep -E 'network boot: |verified in|test result' $(TARGET_DIR)/bench-boot-pxe.log; exit $$s

# Prove .ci/install-deps in fresh Debian 12 trees (mmdebstrap + chroot); not part of `make test`.
check-deps:
	.ci/check-deps
