# bpfplan: run as root for anything that touches the kernel (test, demo).
CARGO ?= cargo
DEB_PACKAGES := clang bpftool libbpf-dev linux-libc-dev make iproute2 dpkg-dev systemd systemd-container mmdebstrap podman runc qemu-system-x86 e2fsprogs

.PHONY: deps build test test-boot test-vm test-container lint demo bench deb

# Install what a fresh Debian machine lacks (apt-get only when something is missing).
deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
		dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

build:
	$(CARGO) build --release

# target/debian/bpfplan_VERSION-1_ARCH.deb: binaries, man pages, shell
# completions, the bpfplan@ unit and the example manifests.
deb: build
	rm -rf target/assets
	target/release/bpfplan generate man --out target/assets/man
	gzip -9n target/assets/man/*.1
	target/release/bpfplan generate bash --out target/assets/completions
	target/release/bpfplan generate zsh --out target/assets/completions
	target/release/bpfplan generate fish --out target/assets/completions
	command -v cargo-deb >/dev/null 2>&1 || $(CARGO) install cargo-deb --locked --version 3.8.0
	$(CARGO) deb -p bpfplan --no-build

# Every test: the cargo tests (kernel tests included), the Debian package
# installed and run end to end, the Ansible module under a real
# ansible-playbook, the Kubernetes files (schema-validated, entrypoint run
# on the host), the Prometheus metrics (promtool, a real node_exporter), the
# audit trail in a real systemd-journald of the test's own, and the boot
# unit under a real systemd (systemd-nspawn, test-boot) and under qemu on
# Debian's own kernel, 6.1 (test-vm). Each part says why it skips when it
# cannot run here (not root); CI sets BPFPLAN_REQUIRE_KERNEL=1 so none skips.
test: deps
	$(CARGO) build -p bpfplan-traffic
	$(CARGO) test
	$(MAKE) deb
	sh tests/package/run.sh
	bash tests/ansible/run.sh
	bash tests/kubernetes/run.sh
	bash tests/prometheus/run.sh
	bash tests/journal/run.sh
	bash tests/boot/run.sh
	bash tests/vm/run.sh
	bash tests/container/run.sh

# The DaemonSet's image, built offline from deploy/kubernetes/Containerfile,
# and its pod under podman with runc.
test-container: deps deb
	bash tests/container/run.sh

# The boot unit under a real systemd: a cached Debian rootfs booted twice
# with systemd-nspawn, the .deb installed and bpfplan@bypass enabled.
test-boot: deps deb
	bash tests/boot/run.sh

# A second kernel: the same rootfs written to a disk image and booted twice
# under qemu (TCG) on Debian's kernel 6.1, with a real reboot; then the
# essential kernel tests run inside the guest.
test-vm: deps deb
	$(CARGO) build -p bpfplan-traffic
	$(CARGO) test --no-run --test lib
	bash tests/vm/run.sh

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

demo: deps build
	sh scripts/demo.sh

bench: deps build
	sh scripts/bench-plan.sh
	sh scripts/bench-apply.sh
	sh scripts/bench-replace.sh
	sh scripts/bench-entries.sh | tee docs/bench-entries.txt
	sh scripts/bench-scale.sh | tee docs/bench-scale.txt
	sh scripts/bench-probe-read.sh | tee docs/bench-probe-read.txt
	sh scripts/stream-experiments.sh | tee docs/stream-experiments.txt
	sh scripts/bench-netns.sh
	target/release/bpfplan bench manifests/bypass.toml --chart docs/bench.svg | tee docs/bench.txt
