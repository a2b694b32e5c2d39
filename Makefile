# Build and install efs-utils. `make install` puts files where the Debian package will:
#   /sbin/mount.efs, $(PREFIX)/bin/{efs-tunnel,efs-renew-cert,amazon-efs-mount-watchdog,efs-utils},
#   $(PREFIX)/lib/efs-utils/take-over-from-amazon-efs-utils (the install scripts'),
#   the systemd unit, /etc/amazon/efs/efs-utils.toml (kept if it exists),
#   /etc/amazon/efs/efs-utils.crt (Amazon Root CA 1-4, replaced on every install, as the
#   incumbent's is), the man pages, /var/log/amazon/efs.
# DESTDIR installs into a staging root (the e2e guest is installed this way).

PREFIX ?= /usr
SBINDIR ?= /sbin
UNITDIR ?= /lib/systemd/system
SYSCONFDIR ?= /etc
MANDIR ?= $(PREFIX)/share/man
DESTDIR ?=
CARGO ?= cargo
BINS := efs-tunnel efs-renew-cert amazon-efs-mount-watchdog efs-utils
# GLIBC=2.17: binaries that run on glibc 2.17 and later (Amazon Linux 2, RHEL 8, Ubuntu
# 22.04, ...), linked by cargo-zigbuild (packaging/zig-toolchain.sh installs it); the
# packages are built so. Unset: for this machine's glibc (plain cargo).
GLIBC ?=
TRIPLE ?= $(shell rustc -vV | sed -n 's/^host: //p')
ifeq ($(GLIBC),)
OUT := target/release
else
OUT := target/$(TRIPLE)/release
endif

.PHONY: build install uninstall test deb rpm

build:
ifeq ($(GLIBC),)
	$(CARGO) build --release --locked -p efs-tunnel -p efs-client-cert -p efs-mount-helper -p efs-watchdog -p efs-utils
else
	packaging/zig-toolchain.sh
	$(CARGO) zigbuild --release --locked --target $(TRIPLE).$(GLIBC) -p efs-tunnel -p efs-client-cert -p efs-mount-helper -p efs-watchdog -p efs-utils
endif

install: build
	install -D -m 0755 $(OUT)/mount-efs $(DESTDIR)$(SBINDIR)/mount.efs
	for b in $(BINS); do install -D -m 0755 $(OUT)/$$b $(DESTDIR)$(PREFIX)/bin/$$b; done
	install -D -m 0755 packaging/take-over-from-amazon-efs-utils $(DESTDIR)$(PREFIX)/lib/efs-utils/take-over-from-amazon-efs-utils
	install -d -m 0755 $(DESTDIR)$(UNITDIR)
	sed 's|/usr/bin/|$(PREFIX)/bin/|' systemd/amazon-efs-mount-watchdog.service \
		>$(DESTDIR)$(UNITDIR)/amazon-efs-mount-watchdog.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/amazon-efs-mount-watchdog.service
	install -d -m 0755 $(DESTDIR)$(SYSCONFDIR)/amazon/efs
	test -e $(DESTDIR)$(SYSCONFDIR)/amazon/efs/efs-utils.toml || \
		sed -e 's|"/usr/bin/efs-tunnel"|"$(PREFIX)/bin/efs-tunnel"|' \
			-e 's|"/usr/bin/efs-renew-cert"|"$(PREFIX)/bin/efs-renew-cert"|' config/efs-utils.toml \
		>$(DESTDIR)$(SYSCONFDIR)/amazon/efs/efs-utils.toml
	install -m 0444 config/efs-utils.crt $(DESTDIR)$(SYSCONFDIR)/amazon/efs/efs-utils.crt
	install -d -m 0750 $(DESTDIR)/var/log/amazon/efs
	for m in man/*.8; do install -D -m 0644 $$m $(DESTDIR)$(MANDIR)/man8/$$(basename $$m); done
	for m in man/*.5; do install -D -m 0644 $$m $(DESTDIR)$(MANDIR)/man5/$$(basename $$m); done

deb:
	packaging/build-deb.sh

rpm:
	packaging/build-rpm.sh

uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/mount.efs $(DESTDIR)$(UNITDIR)/amazon-efs-mount-watchdog.service
	rm -f $(DESTDIR)$(SYSCONFDIR)/amazon/efs/efs-utils.crt
	for b in $(BINS); do rm -f $(DESTDIR)$(PREFIX)/bin/$$b; done
	rm -rf $(DESTDIR)$(PREFIX)/lib/efs-utils
	for m in man/*.8; do rm -f $(DESTDIR)$(MANDIR)/man8/$$(basename $$m); done
	for m in man/*.5; do rm -f $(DESTDIR)$(MANDIR)/man5/$$(basename $$m); done

test:
	tests/run-all.sh
