/*
 * elprobe - a minimal VMM on /dev/kvm that measures what protected KVM (pKVM)
 * isolates on an arm64 Linux or Android host.
 *
 * Static, no dependencies: builds with `zig cc -target aarch64-linux-musl
 * -static` or `aarch64-linux-gnu-gcc -static` (see pkvmlab/images/elprobe.py).
 *
 * Usage:  elprobe [--timeout SECONDS] [--vm normal|protected|both] [probe ...]
 *         elprobe --help | --version
 *   probes: create guest_el host_read hypercalls teardown teardown_min   (default: all)
 *   --timeout: wall-clock limit per VM (default 30 s).  Each VM type runs in
 *   its own forked child; the parent kills a child that overruns and reports
 *   the probes it did not finish, so the binary never hangs and never loses
 *   what was measured before a crash.
 *   Exit status: 0 when it ran (whatever it measured), 2 on a usage error,
 *   3 when /dev/kvm cannot be opened (a "fatal" record says why first).
 *
 * OUTPUT (stdout): one JSON object per line, every object has a "record" key.
 *   {"record":"start",...}     first line: probe_version, uname, argv, page_size,
 *                              timeout_s, vms, probes, /proc/cmdline.
 *   {"record":"kvm",...}       /dev/kvm opened: api_version, max_ipa_bits,
 *                              vcpu_mmap_size.
 *   {"record":"fatal",...}     /dev/kvm could not be opened: errno, errno_name.
 *   {"record":"vm_setup",...}  per VM: memslot/vCPU setup and guest run facts.
 *   {"record":"result","probe":P,"vm":V,"outcome":O,...}
 *                              one per probe and VM type (V = normal|protected).
 *   {"record":"vm_child",...}  per VM: how the child process ended (exit code or
 *                              signal, "timeout"), its duration_ms.
 *   {"record":"summary",...}   last line: complete, results, outcomes count,
 *                              duration_ms.  A missing summary = truncated run.
 *   Register values are hex strings ("0x..." 16 digits); times are integers in
 *   milliseconds.  Keys are written without spaces ("probe":"x").
 *
 * OUTCOME vocabulary (the "outcome" of a result record):
 *   ok               the probe completed; its fields carry what was measured
 *                    (create: VM created; guest_el: "current_el"; host_read:
 *                    the read completed, "matches_guest_pattern"; hypercalls:
 *                    every call returned to the guest or trapped, per-call
 *                    "status"; teardown: the read completed, "content").
 *   refused          the kernel refused KVM_CREATE_VM for this VM type
 *                    ("errno", "errno_name").
 *   fault            a host read of guest memory raised a signal, caught
 *                    ("signal", "si_code", "si_code_name", "fault_offset").
 *   guest_exception  the guest took an exception before the probe's data was
 *                    reported ("esr", "ec", "elr", "far").
 *   error            a syscall/ioctl failed or the guest stopped unexpectedly
 *                    ("step", "errno"/"exit_reason", "detail").
 *   not_run          a prerequisite failed ("reason"), e.g. create refused.
 *   timeout          (parent) the VM child overran --timeout and was killed.
 *   crashed          (parent) the VM child died of an uncaught signal or an
 *                    unexpected exit ("signal" or "exit_code").
 *
 * teardown "content" (read at once) and "content_later" (read again after
 *   TEARDOWN_REREAD_MS) values: zeroed (all 0), guest_pattern (what the guest
 *   wrote), host_fill (what the host wrote before the guest ran: the guest's
 *   writes were lost), other (anything else; "first_qword" shows it).
 *
 * teardown_min: the smallest reproducer of a teardown leak, apart from the
 *   probe's main VM: for MAP_PRIVATE and then MAP_SHARED anonymous memory, a
 *   fresh VM of the same type with a two-page memslot whose guest stores the
 *   pattern into the second page and exits through MMIO; no host access while
 *   it lives; the VM is destroyed and the host reads both pages.  Fields:
 *   "<private|shared>_data" and "<private|shared>_code" (zeroed, guest_pattern,
 *   intact, other, fault), "content" (guest_pattern if any data page kept it).
 *
 * GUEST: a few aarch64 instructions written as raw 32-bit words into the
 * memslot (MMU off, EL1h, DAIF masked).  Memory map (guest physical):
 *   0x10000000 +0x0000  code            +0x0800 exception vectors (VBAR_EL1)
 *              +0x1000  exception handler  +0x8000 data (64 bytes pattern)
 *   memslot: 0x10000000..0x1000ffff, 64 KiB of MAP_PRIVATE|MAP_ANONYMOUS
 *   (covers 4K/16K/64K host pages; pKVM maps only anonymous memory into pVMs).
 *   MMIO "ports" (stores outside any memslot => KVM_EXIT_MMIO), base 0x20000000:
 *     +0x000 CurrentEL   +0x008 pattern written   +0x010 step marker
 *     +0x100+0x40*i+8*r  hypercall i, register x<r> (r = 0..3)
 *     +0x400 vector idx  +0x408 ESR_EL1  +0x410 ELR_EL1  +0x418 FAR_EL1
 *     +0x7f8 done
 * Instruction encodings used (see the enc_* helpers below, which assert a few
 * known words at start-up):
 *   MOVZ Xd,#imm16,LSL#(16*hw)  0xD2800000 | hw<<21 | imm16<<5 | Rd
 *   MOVK Xd,#imm16,LSL#(16*hw)  0xF2800000 | hw<<21 | imm16<<5 | Rd
 *   STR  Xt,[Xn,#imm] (imm%8=0) 0xF9000000 | (imm/8)<<10 | Rn<<5 | Rt
 *   MRS  Xt,<sysreg>            0xD5300000 | o0<<19 | op1<<16 | CRn<<12 | CRm<<8 | op2<<5 | Rt
 *   MSR  <sysreg>,Xt            0xD5100000 | (same fields)
 *        (op0 = 2 + o0; CurrentEL = 3,0,4,2,2 -> MRS X0 = 0xD5384240;
 *         VBAR_EL1 = 3,0,12,0,0; ESR_EL1 = 3,0,5,2,0; ELR_EL1 = 3,0,4,0,1;
 *         FAR_EL1 = 3,0,6,0,0)
 *   ADD  Xd,Xn,#imm12           0x91000000 | imm12<<10 | Rn<<5 | Rd
 *   HVC  #imm16                 0xD4000002 | imm16<<5        (HVC #0 = 0xD4000002)
 *   SMC  #imm16                 0xD4000003 | imm16<<5        (SMC #0 = 0xD4000003)
 *   B    <rel>                  0x14000000 | (rel/4 & 0x3FFFFFF)  (B . = 0x14000000)
 *   ISB                         0xD5033FDF
 *   ERET                        0xD69F03E0
 * Hypercalls use the HVC conduit, as KVM's PSCI node tells guests; one probe
 * uses SMC on purpose (an unknown SiP ID must not reach firmware).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/kvm.h>

#define ELPROBE_VERSION "1.1"

#ifndef KVM_VM_TYPE_ARM_PROTECTED
#define KVM_VM_TYPE_ARM_PROTECTED (1UL << 31)
#endif
#ifndef KVM_CAP_ARM_VM_IPA_SIZE
#define KVM_CAP_ARM_VM_IPA_SIZE 165
#endif

#define SLOT_GPA 0x10000000ULL
#define SLOT_SIZE 0x10000ULL
#define VEC_OFF 0x800
#define HANDLER_OFF 0x1000
#define DATA_OFF 0x8000
#define DATA_QWORDS 8
#define MMIO_GPA 0x20000000ULL
#define PORT_EL 0x000
#define PORT_PATTERN 0x008
#define PORT_STEP 0x010
#define PORT_HC 0x100
#define PORT_EXC_VEC 0x400
#define PORT_EXC_ESR 0x408
#define PORT_EXC_ELR 0x410
#define PORT_EXC_FAR 0x418
#define PORT_DONE 0x7f8
#define NPORTS (0x800 / 8)

#define GUEST_PATTERN 0x706b766d454c5052ULL /* "RPLEmvkp" little-endian: 'pkvmELPR' */
#define HOST_FILL 0xeeeeeeeeeeeeeeeeULL
#define MAX_EXITS 4000
#define TEARDOWN_REREAD_MS 500
#define MAX_EXCEPTIONS 16

enum { P_CREATE, P_GUEST_EL, P_HOST_READ, P_HYPERCALLS, P_TEARDOWN, P_TEARDOWN_MIN, NPROBES };
static const char *const probe_names[NPROBES] = {"create", "guest_el", "host_read", "hypercalls", "teardown",
						 "teardown_min"};

enum { VM_NORMAL, VM_PROTECTED };
static const char *const vm_names[2] = {"normal", "protected"};

/* ------------------------------------------------------------------ names */

struct name { long value; const char *name; };

static const struct name errno_table[] = {
	{EPERM, "EPERM"}, {ENOENT, "ENOENT"}, {EINTR, "EINTR"}, {EIO, "EIO"}, {ENXIO, "ENXIO"},
	{E2BIG, "E2BIG"}, {ENOEXEC, "ENOEXEC"}, {EBADF, "EBADF"}, {EAGAIN, "EAGAIN"}, {ENOMEM, "ENOMEM"},
	{EACCES, "EACCES"}, {EFAULT, "EFAULT"}, {EBUSY, "EBUSY"}, {EEXIST, "EEXIST"}, {ENODEV, "ENODEV"},
	{EINVAL, "EINVAL"}, {ENFILE, "ENFILE"}, {EMFILE, "EMFILE"}, {ENOTTY, "ENOTTY"}, {ENOSPC, "ENOSPC"},
	{ERANGE, "ERANGE"}, {ENOSYS, "ENOSYS"}, {EOPNOTSUPP, "EOPNOTSUPP"}, {EHWPOISON, "EHWPOISON"},
	{EROFS, "EROFS"}, {EPIPE, "EPIPE"}, {0, NULL},
};
static const struct name signal_table[] = {
	{SIGHUP, "SIGHUP"}, {SIGINT, "SIGINT"}, {SIGQUIT, "SIGQUIT"}, {SIGILL, "SIGILL"}, {SIGTRAP, "SIGTRAP"},
	{SIGABRT, "SIGABRT"}, {SIGBUS, "SIGBUS"}, {SIGFPE, "SIGFPE"}, {SIGKILL, "SIGKILL"}, {SIGUSR1, "SIGUSR1"},
	{SIGSEGV, "SIGSEGV"}, {SIGUSR2, "SIGUSR2"}, {SIGPIPE, "SIGPIPE"}, {SIGALRM, "SIGALRM"},
	{SIGTERM, "SIGTERM"}, {SIGSYS, "SIGSYS"}, {SIGXCPU, "SIGXCPU"}, {0, NULL},
};
static const struct name segv_codes[] = {
	{1, "SEGV_MAPERR"}, {2, "SEGV_ACCERR"}, {3, "SEGV_BNDERR"}, {4, "SEGV_PKUERR"}, {5, "SEGV_ACCADI"},
	{6, "SEGV_ADIDERR"}, {7, "SEGV_ADIPERR"}, {8, "SEGV_MTEAERR"}, {9, "SEGV_MTESERR"}, {10, "SEGV_CPERR"},
	{0, NULL},
};
static const struct name bus_codes[] = {
	{1, "BUS_ADRALN"}, {2, "BUS_ADRERR"}, {3, "BUS_OBJERR"}, {4, "BUS_MCEERR_AR"}, {5, "BUS_MCEERR_AO"},
	{0, NULL},
};
static const struct name exit_table[] = {
	{0, "KVM_EXIT_UNKNOWN"}, {1, "KVM_EXIT_EXCEPTION"}, {2, "KVM_EXIT_IO"}, {3, "KVM_EXIT_HYPERCALL"},
	{4, "KVM_EXIT_DEBUG"}, {5, "KVM_EXIT_HLT"}, {6, "KVM_EXIT_MMIO"}, {8, "KVM_EXIT_SHUTDOWN"},
	{9, "KVM_EXIT_FAIL_ENTRY"}, {10, "KVM_EXIT_INTR"}, {17, "KVM_EXIT_INTERNAL_ERROR"},
	{24, "KVM_EXIT_SYSTEM_EVENT"}, {28, "KVM_EXIT_ARM_NISV"}, {39, "KVM_EXIT_MEMORY_FAULT"}, {0, NULL},
};

static const char *lookup(const struct name *table, long value, char *fallback, size_t len, const char *prefix)
{
	for (; table->name; table++)
		if (table->value == value)
			return table->name;
	snprintf(fallback, len, "%s%ld", prefix, value);
	return fallback;
}

static const char *errno_name(int e)
{
	static char buf[24];
	return lookup(errno_table, e, buf, sizeof(buf), "E#");
}

static const char *signal_name(int s)
{
	static char buf[24];
	return lookup(signal_table, s, buf, sizeof(buf), "SIG#");
}

static const char *si_code_name(int sig, int code)
{
	static char buf[24];
	if (sig == SIGSEGV)
		return lookup(segv_codes, code, buf, sizeof(buf), "SEGV#");
	if (sig == SIGBUS)
		return lookup(bus_codes, code, buf, sizeof(buf), "BUS#");
	snprintf(buf, sizeof(buf), "%d", code);
	return buf;
}

static const char *exit_name(unsigned reason)
{
	static char buf[24];
	return lookup(exit_table, (long)reason, buf, sizeof(buf), "KVM_EXIT#");
}

/* ------------------------------------------------------------------- JSON */

struct jbuf { char s[16384]; size_t n; int first; };

static void jraw(struct jbuf *j, const char *fmt, ...)
{
	va_list ap;
	if (j->n >= sizeof(j->s))
		return;
	va_start(ap, fmt);
	int r = vsnprintf(j->s + j->n, sizeof(j->s) - j->n, fmt, ap);
	va_end(ap);
	if (r > 0)
		j->n = (j->n + (size_t)r < sizeof(j->s)) ? j->n + (size_t)r : sizeof(j->s) - 1;
}

static void jopen(struct jbuf *j, const char *record)
{
	j->n = 0;
	j->s[0] = 0;
	jraw(j, "{\"record\":\"%s\"", record);
}

static void jescaped(struct jbuf *j, const char *v)
{
	jraw(j, "\"");
	for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
		if (*p == '"' || *p == '\\')
			jraw(j, "\\%c", *p);
		else if (*p < 0x20 || *p >= 0x7f)
			jraw(j, "\\u%04x", *p);
		else
			jraw(j, "%c", *p);
	}
	jraw(j, "\"");
}

static void jstr(struct jbuf *j, const char *k, const char *v) { jraw(j, ",\"%s\":", k); jescaped(j, v); }
static void jint(struct jbuf *j, const char *k, long long v) { jraw(j, ",\"%s\":%lld", k, v); }
static void jhex(struct jbuf *j, const char *k, uint64_t v) { jraw(j, ",\"%s\":\"0x%016llx\"", k, (unsigned long long)v); }
static void jbool(struct jbuf *j, const char *k, int v) { jraw(j, ",\"%s\":%s", k, v ? "true" : "false"); }

/* Writes the line with one write(): a child killed later never leaves half a line behind. */
static void jemit(struct jbuf *j, int fd)
{
	jraw(j, "}\n");
	if (j->n >= sizeof(j->s) - 1) { /* truncated: keep it valid JSON */
		j->n = 0;
		jraw(j, "{\"record\":\"error\",\"detail\":\"output line too long\"}\n");
	}
	size_t off = 0;
	while (off < j->n) {
		ssize_t w = write(fd, j->s + off, j->n - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;
		off += (size_t)w;
	}
}

static void jresult(struct jbuf *j, int probe, int vm, const char *outcome)
{
	jopen(j, "result");
	jstr(j, "probe", probe_names[probe]);
	jstr(j, "vm", vm_names[vm]);
	jstr(j, "outcome", outcome);
}

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---------------------------------------------------------- instructions */

static uint32_t enc_movz(unsigned rd, unsigned imm16, unsigned hw) { return 0xD2800000u | hw << 21 | (imm16 & 0xffff) << 5 | rd; }
static uint32_t enc_movk(unsigned rd, unsigned imm16, unsigned hw) { return 0xF2800000u | hw << 21 | (imm16 & 0xffff) << 5 | rd; }
static uint32_t enc_str(unsigned rt, unsigned rn, unsigned imm) { return 0xF9000000u | (imm / 8) << 10 | rn << 5 | rt; }
static uint32_t enc_sysreg(unsigned op0, unsigned op1, unsigned crn, unsigned crm, unsigned op2)
{
	return (op0 - 2) << 19 | op1 << 16 | crn << 12 | crm << 8 | op2 << 5;
}
#define SR_CURRENTEL enc_sysreg(3, 0, 4, 2, 2)
#define SR_VBAR_EL1 enc_sysreg(3, 0, 12, 0, 0)
#define SR_ESR_EL1 enc_sysreg(3, 0, 5, 2, 0)
#define SR_ELR_EL1 enc_sysreg(3, 0, 4, 0, 1)
#define SR_FAR_EL1 enc_sysreg(3, 0, 6, 0, 0)
static uint32_t enc_mrs(unsigned rt, uint32_t sr) { return 0xD5300000u | sr | rt; }
static uint32_t enc_msr(uint32_t sr, unsigned rt) { return 0xD5100000u | sr | rt; }
static uint32_t enc_add_imm(unsigned rd, unsigned rn, unsigned imm12) { return 0x91000000u | imm12 << 10 | rn << 5 | rd; }
static uint32_t enc_hvc(unsigned imm16) { return 0xD4000002u | imm16 << 5; }
static uint32_t enc_smc(unsigned imm16) { return 0xD4000003u | imm16 << 5; }
static uint32_t enc_b(long rel_bytes) { return 0x14000000u | ((uint32_t)(rel_bytes / 4) & 0x3FFFFFFu); }
#define ENC_ISB 0xD5033FDFu
#define ENC_ERET 0xD69F03E0u

/* Known words from the Arm ARM / any disassembler: a wrong helper stops the probe, not the board. */
static int encodings_ok(void)
{
	return enc_mrs(0, SR_CURRENTEL) == 0xD5384240u && enc_hvc(0) == 0xD4000002u &&
	       enc_smc(0) == 0xD4000003u && enc_b(0) == 0x14000000u && enc_movz(0, 0, 0) == 0xD2800000u &&
	       enc_str(0, 1, 0) == 0xF9000020u && enc_msr(SR_VBAR_EL1, 0) == 0xD518C000u &&
	       enc_mrs(1, SR_ESR_EL1) == 0xD5385201u && enc_add_imm(0, 0, 4) == 0x91001000u &&
	       enc_b(-4) == 0x17FFFFFFu;
}

struct asmbuf { uint32_t *w; size_t n, cap; int overflow; };

static void emit(struct asmbuf *a, uint32_t word)
{
	if (a->n < a->cap)
		a->w[a->n++] = word;
	else
		a->overflow = 1;
}

/* Xd = 64-bit constant. */
static void emit_mov64(struct asmbuf *a, unsigned rd, uint64_t v)
{
	emit(a, enc_movz(rd, v & 0xffff, 0));
	for (unsigned hw = 1; hw < 4; hw++)
		if ((v >> (16 * hw)) & 0xffff)
			emit(a, enc_movk(rd, (v >> (16 * hw)) & 0xffff, hw));
}

/* Guest register use: x28 MMIO base, x27 scratch address, x26 step id, x25 data
 * address, x24 pattern, x9/x10 exception handler, x0..x3 SMCCC. */
static void emit_step(struct asmbuf *a, unsigned step)
{
	emit(a, enc_movz(26, step, 0));
	emit(a, enc_str(26, 28, PORT_STEP));
}

/* ------------------------------------------------------------- hypercalls */

enum conduit { HVC, SMC };
struct hcall { const char *name; uint32_t fid; enum conduit conduit; };
static const struct hcall hcalls[] = {
	{"smccc_version", 0x80000000u, HVC},     /* SMCCC_VERSION (Arm DEN0028) */
	{"psci_version", 0x84000000u, HVC},      /* PSCI_VERSION */
	{"vendor_hyp_uid", 0x8600ff01u, HVC},    /* Vendor hyp Call UID */
	{"kvm_features", 0x86000000u, HVC},      /* ARM_SMCCC_VENDOR_HYP_KVM_FEATURES */
	{"hyp_meminfo", 0xc6000002u, HVC},       /* ARM_SMCCC_KVM_FUNC_HYP_MEMINFO (pVMs) */
	{"unknown_vendor_hvc", 0xc600ffffu, HVC}, /* unallocated vendor-hyp function */
	{"unknown_sip_hvc", 0xc200ffffu, HVC},   /* unallocated SiP function via HVC */
	{"unknown_sip_smc", 0xc200ffffu, SMC},   /* same via SMC: must not reach firmware */
};
#define NHCALLS (sizeof(hcalls) / sizeof(hcalls[0]))
#define STEP_EL 1
#define STEP_PATTERN 2
#define STEP_HC0 16

static const char *const kvm_feature_bits[32] = {
	[0] = "FEATURES", [1] = "PTP", [2] = "HYP_MEMINFO", [3] = "MEM_SHARE", [4] = "MEM_UNSHARE",
	[7] = "MMIO_GUARD",
};

/* ----------------------------------------------------------- guest build */

static size_t build_guest(uint8_t *mem, unsigned probes)
{
	struct asmbuf a = {(uint32_t *)mem, 0, VEC_OFF / 4, 0};
	emit_mov64(&a, 28, MMIO_GPA);
	emit_mov64(&a, 27, SLOT_GPA + VEC_OFF);
	emit(&a, enc_msr(SR_VBAR_EL1, 27));
	emit(&a, ENC_ISB);
	if (probes & (1u << P_GUEST_EL)) {
		emit_step(&a, STEP_EL);
		emit(&a, enc_mrs(0, SR_CURRENTEL));
		emit(&a, enc_str(0, 28, PORT_EL));
	}
	if (probes & ((1u << P_HOST_READ) | (1u << P_TEARDOWN))) {
		emit_step(&a, STEP_PATTERN);
		emit_mov64(&a, 25, SLOT_GPA + DATA_OFF);
		emit_mov64(&a, 24, GUEST_PATTERN);
		for (unsigned k = 0; k < DATA_QWORDS; k++)
			emit(&a, enc_str(24, 25, 8 * k));
		emit(&a, enc_movz(0, DATA_QWORDS, 0));
		emit(&a, enc_str(0, 28, PORT_PATTERN));
	}
	if (probes & (1u << P_HYPERCALLS)) {
		for (unsigned i = 0; i < NHCALLS; i++) {
			emit_step(&a, STEP_HC0 + i);
			emit_mov64(&a, 0, hcalls[i].fid);
			for (unsigned r = 1; r < 4; r++)
				emit(&a, enc_movz(r, 0, 0));
			emit(&a, hcalls[i].conduit == HVC ? enc_hvc(0) : enc_smc(0));
			for (unsigned r = 0; r < 4; r++)
				emit(&a, enc_str(r, 28, PORT_HC + 0x40 * i + 8 * r));
		}
	}
	emit(&a, enc_str(28, 28, PORT_DONE));
	emit(&a, enc_b(0));

	/* 16 vector entries (0x80 bytes each): x9 = entry index; branch to the handler. */
	for (unsigned v = 0; v < 16; v++) {
		uint32_t *entry = (uint32_t *)(mem + VEC_OFF + 0x80 * v);
		entry[0] = enc_movz(9, v, 0);
		entry[1] = enc_b((long)HANDLER_OFF - (long)(VEC_OFF + 0x80 * v + 4));
	}
	/* Handler: report ESR/ELR/FAR then the vector index, skip the instruction, return. */
	struct asmbuf h = {(uint32_t *)(mem + HANDLER_OFF), 0, 64, 0};
	emit(&h, enc_mrs(10, SR_ESR_EL1));
	emit(&h, enc_str(10, 28, PORT_EXC_ESR));
	emit(&h, enc_mrs(10, SR_ELR_EL1));
	emit(&h, enc_str(10, 28, PORT_EXC_ELR));
	emit(&h, enc_mrs(10, SR_FAR_EL1));
	emit(&h, enc_str(10, 28, PORT_EXC_FAR));
	emit(&h, enc_str(9, 28, PORT_EXC_VEC));
	emit(&h, enc_mrs(10, SR_ELR_EL1));
	emit(&h, enc_add_imm(10, 10, 4));
	emit(&h, enc_msr(SR_ELR_EL1, 10));
	emit(&h, ENC_ERET);
	return a.overflow || h.overflow ? 0 : a.n;
}

/* ------------------------------------------------------ host-side faults */

static sigjmp_buf fault_env;
static volatile sig_atomic_t fault_armed;
static volatile int fault_sig, fault_code;
static void *volatile fault_addr;

static void on_fault(int sig, siginfo_t *info, void *uctx)
{
	(void)uctx;
	if (!fault_armed) { /* not ours: die of it, the parent reports the crash */
		signal(sig, SIG_DFL);
		return;
	}
	fault_armed = 0;
	fault_sig = sig;
	fault_code = info->si_code;
	fault_addr = info->si_addr;
	siglongjmp(fault_env, 1);
}

struct readout { int faulted, sig, code; long fault_offset; uint64_t q[DATA_QWORDS]; int nread; };

/* Reads `n` qwords at p; a SIGSEGV/SIGBUS is caught and reported, not fatal. */
static void guarded_read(const volatile uint64_t *p, int n, struct readout *r)
{
	memset(r, 0, sizeof(*r));
	if (sigsetjmp(fault_env, 1)) {
		r->faulted = 1;
		r->sig = fault_sig;
		r->code = fault_code;
		r->fault_offset = (long)((const char *)fault_addr - (const char *)p);
		return;
	}
	fault_armed = 1;
	for (int i = 0; i < n; i++) {
		r->q[i] = p[i];
		r->nread = i + 1;
	}
	fault_armed = 0;
}

static void jfault(struct jbuf *j, const struct readout *r)
{
	jstr(j, "signal", signal_name(r->sig));
	jint(j, "si_code", r->code);
	jstr(j, "si_code_name", si_code_name(r->sig, r->code));
	jint(j, "fault_offset", r->fault_offset);
}

static const char *classify(const struct readout *r)
{
	int zero = 1, guest = 1, host = 1;
	for (int i = 0; i < DATA_QWORDS; i++) {
		zero &= r->q[i] == 0;
		guest &= r->q[i] == GUEST_PATTERN;
		host &= r->q[i] == HOST_FILL;
	}
	return zero ? "zeroed" : guest ? "guest_pattern" : host ? "host_fill" : "other";
}

/* --------------------------------------------------------------- VM child */

struct exc { unsigned step, vec; uint64_t esr, elr, far; };
struct guestlog {
	uint64_t val[NPORTS];
	unsigned char seen[NPORTS];
	unsigned cur_step, nexc, exits;
	struct exc exc[MAX_EXCEPTIONS];
	int done, run_errno;
	unsigned stop_exit;       /* exit reason that stopped the loop (0 = none) */
	const char *stop_detail;
};

static int port_seen(const struct guestlog *g, unsigned port) { return g->seen[port / 8]; }
static uint64_t port_val(const struct guestlog *g, unsigned port) { return g->val[port / 8]; }

static const struct exc *exc_for_step(const struct guestlog *g, unsigned step)
{
	for (unsigned i = 0; i < g->nexc; i++)
		if (g->exc[i].step == step)
			return &g->exc[i];
	return NULL;
}

static void jexc(struct jbuf *j, const struct exc *e)
{
	jhex(j, "esr", e->esr);
	jraw(j, ",\"ec\":\"0x%02llx\"", (unsigned long long)((e->esr >> 26) & 0x3f));
	jhex(j, "elr", e->elr);
	jhex(j, "far", e->far);
	jint(j, "vector", e->vec);
}

/* Why a probe has no data: the guest's exception in that step, or the run's stop. */
static void no_data(struct jbuf *j, int probe, int vm, const struct guestlog *g, unsigned step, int out)
{
	const struct exc *e = exc_for_step(g, step);
	if (e) {
		jresult(j, probe, vm, "guest_exception");
		jexc(j, e);
	} else {
		jresult(j, probe, vm, "error");
		jstr(j, "step", "KVM_RUN");
		if (g->run_errno) {
			jint(j, "errno", g->run_errno);
			jstr(j, "errno_name", errno_name(g->run_errno));
		}
		if (g->stop_exit)
			jstr(j, "exit_reason", exit_name(g->stop_exit));
		jstr(j, "detail", g->stop_detail ? g->stop_detail : "guest never reported this probe's data");
	}
	jemit(j, out);
}

static int run_guest(int vcpu, struct kvm_run *run, struct guestlog *g, long long deadline)
{
	while (!g->done && g->exits < MAX_EXITS && g->nexc < MAX_EXCEPTIONS) {
		if (now_ms() > deadline) {
			g->stop_detail = "guest ran past the time limit";
			return -1;
		}
		if (ioctl(vcpu, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			g->run_errno = errno;
			g->stop_detail = "KVM_RUN failed";
			return -1;
		}
		g->exits++;
		if (run->exit_reason != KVM_EXIT_MMIO) {
			g->stop_exit = run->exit_reason;
			g->stop_detail = "unexpected exit reason";
			return -1;
		}
		uint64_t addr = run->mmio.phys_addr, v = 0;
		if (!run->mmio.is_write) {
			memset(run->mmio.data, 0, sizeof(run->mmio.data));
			continue;
		}
		memcpy(&v, run->mmio.data, run->mmio.len <= 8 ? run->mmio.len : 8);
		if (addr < MMIO_GPA || addr >= MMIO_GPA + NPORTS * 8)
			continue;
		unsigned port = (unsigned)(addr - MMIO_GPA);
		g->val[port / 8] = v;
		g->seen[port / 8] = 1;
		if (port == PORT_STEP)
			g->cur_step = (unsigned)v;
		else if (port == PORT_DONE)
			g->done = 1;
		else if (port == PORT_EXC_VEC) {
			struct exc *e = &g->exc[g->nexc++];
			e->step = g->cur_step;
			e->vec = (unsigned)v;
			e->esr = port_val(g, PORT_EXC_ESR);
			e->elr = port_val(g, PORT_EXC_ELR);
			e->far = port_val(g, PORT_EXC_FAR);
		}
	}
	if (!g->done && !g->stop_detail)
		g->stop_detail = g->nexc >= MAX_EXCEPTIONS ? "too many guest exceptions" : "too many exits";
	return g->done ? 0 : -1;
}

static void emit_hypercalls(struct jbuf *j, int vm, const struct guestlog *g, long long ms, int out)
{
	unsigned answered = 0;
	for (unsigned i = 0; i < NHCALLS; i++) {
		unsigned base = PORT_HC + 0x40 * i;
		answered += exc_for_step(g, STEP_HC0 + i) || (port_seen(g, base) && port_seen(g, base + 24));
	}
	/* ok: every call came back (returned or trapped into the guest); else the run stopped early. */
	jresult(j, P_HYPERCALLS, vm, answered == NHCALLS ? "ok" : (!answered && g->nexc) ? "guest_exception" : "error");
	if (answered < NHCALLS) {
		jstr(j, "detail", g->stop_detail ? g->stop_detail : "not every call reported back");
		if (g->run_errno) {
			jint(j, "errno", g->run_errno);
			jstr(j, "errno_name", errno_name(g->run_errno));
		}
		if (g->stop_exit)
			jstr(j, "exit_reason", exit_name(g->stop_exit));
	}
	jraw(j, ",\"calls\":[");
	for (unsigned i = 0; i < NHCALLS; i++) {
		const struct hcall *c = &hcalls[i];
		unsigned base = PORT_HC + 0x40 * i;
		const struct exc *e = exc_for_step(g, STEP_HC0 + i);
		int returned = port_seen(g, base) && port_seen(g, base + 24);
		const char *status = e ? "exception" : returned ? "returned" : "missing";
		jraw(j, "%s{\"name\":\"%s\",\"conduit\":\"%s\",\"fid\":\"0x%08x\",\"status\":\"%s\"", i ? "," : "",
		     c->name, c->conduit == HVC ? "hvc" : "smc", c->fid, status);
		if (e)
			jexc(j, e);
		if (returned && !e) {
			uint64_t x[4];
			for (unsigned r = 0; r < 4; r++)
				x[r] = port_val(g, base + 8 * r);
			jhex(j, "x0", x[0]);
			jhex(j, "x1", x[1]);
			jhex(j, "x2", x[2]);
			jhex(j, "x3", x[3]);
			/* SMC32 IDs (bit 30 clear) return a 32-bit value in w0. */
			long long ret = (c->fid & 0x40000000u) ? (long long)(int64_t)x[0] : (long long)(int32_t)(uint32_t)x[0];
			jint(j, "ret", ret);
			const char *rn = ret == 0 ? "SUCCESS" : ret == -1 ? "NOT_SUPPORTED" : ret == -2 ? "NOT_REQUIRED"
				       : ret == -3 ? "INVALID_PARAMETER" : NULL;
			if (rn)
				jstr(j, "ret_name", rn);
			jraw(j, ",\"decoded\":{");
			if (!strcmp(c->name, "smccc_version") || !strcmp(c->name, "psci_version")) {
				if (ret < 0)
					jraw(j, "\"not_supported\":true");
				else
					jraw(j, "\"major\":%u,\"minor\":%u", (unsigned)(x[0] >> 16) & 0x7fff,
					     (unsigned)x[0] & 0xffff);
			} else if (!strcmp(c->name, "vendor_hyp_uid")) {
				uint8_t b[16];
				for (unsigned r = 0; r < 4; r++)
					for (unsigned k = 0; k < 4; k++)
						b[4 * r + k] = (uint8_t)(x[r] >> (8 * k));
				char uuid[40];
				snprintf(uuid, sizeof(uuid),
					 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
					 b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11],
					 b[12], b[13], b[14], b[15]);
				jraw(j, "\"uuid\":\"%s\",\"is_kvm\":%s", uuid,
				     strcmp(uuid, "28b46fb6-2ec5-11e9-a9ca-4b564d003a74") ? "false" : "true");
			} else if (!strcmp(c->name, "kvm_features")) {
				jraw(j, "\"bitmap\":\"0x%08llx\",\"functions\":[", (unsigned long long)(x[0] & 0xffffffffu));
				int n = 0;
				for (unsigned bit = 0; bit < 32 && ret >= 0; bit++)
					if (x[0] >> bit & 1) {
						if (kvm_feature_bits[bit])
							jraw(j, "%s\"%s\"", n++ ? "," : "", kvm_feature_bits[bit]);
						else
							jraw(j, "%s\"bit%u\"", n++ ? "," : "", bit);
					}
				jraw(j, "]");
			} else if (!strcmp(c->name, "hyp_meminfo")) {
				if (ret < 0)
					jraw(j, "\"not_supported\":true");
				else
					jraw(j, "\"granule\":%llu", (unsigned long long)x[0]);
			} else {
				jraw(j, "\"not_supported\":%s", ret == -1 ? "true" : "false");
			}
			jraw(j, "}");
		}
		jraw(j, "}");
	}
	jraw(j, "]");
	jint(j, "answered", answered);
	jint(j, "total", NHCALLS);
	jint(j, "duration_ms", ms);
	jemit(j, out);
}

/* One minimal VM: returns NULL and fills data/code, or the step that failed (errno in *err). */
static const char *minimal_vm(int kvm, unsigned long type, int shared, long long deadline,
			      const char **data, const char **code, long long *destroy_ms, int *err)
{
	long page = sysconf(_SC_PAGESIZE);
	size_t size = 2 * (size_t)page;
	uint8_t *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS,
			    -1, 0);
	*err = 0;
	if (mem == MAP_FAILED) {
		*err = errno;
		return "mmap(memslot)";
	}
	struct asmbuf a = {(uint32_t *)mem, 0, (unsigned)(page / 4), 0};
	emit_mov64(&a, 28, MMIO_GPA);
	emit_mov64(&a, 25, SLOT_GPA + (uint64_t)page);
	emit_mov64(&a, 24, GUEST_PATTERN);
	for (unsigned k = 0; k < DATA_QWORDS; k++)
		emit(&a, enc_str(24, 25, 8 * k));
	emit(&a, enc_str(28, 28, PORT_DONE));
	emit(&a, enc_b(0));
	uint32_t first_word = ((uint32_t *)mem)[0];
	int vmfd, vcpu = -1, mmap_size = 0;
	struct kvm_run *run = MAP_FAILED;
	const char *step = NULL;
	do
		vmfd = ioctl(kvm, KVM_CREATE_VM, type);
	while (vmfd < 0 && errno == EINTR);
	if (vmfd < 0) {
		*err = errno;
		munmap(mem, size);
		return "KVM_CREATE_VM";
	}
	struct kvm_userspace_memory_region region = {
		.slot = 0, .guest_phys_addr = SLOT_GPA, .memory_size = size, .userspace_addr = (uint64_t)(uintptr_t)mem,
	};
	struct kvm_vcpu_init init;
	memset(&init, 0, sizeof(init));
	uint64_t pc = SLOT_GPA, pstate = 0x3c5;
	struct kvm_one_reg reg_pc = {
		.id = KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | (offsetof(struct kvm_regs, regs.pc) / 4),
		.addr = (uint64_t)(uintptr_t)&pc,
	};
	struct kvm_one_reg reg_pstate = {
		.id = KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | (offsetof(struct kvm_regs, regs.pstate) / 4),
		.addr = (uint64_t)(uintptr_t)&pstate,
	};
	static struct guestlog g;
	memset(&g, 0, sizeof(g));
	if (a.overflow)
		step = "build guest code";
	else if (ioctl(vmfd, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		step = "KVM_SET_USER_MEMORY_REGION";
	else if ((vcpu = ioctl(vmfd, KVM_CREATE_VCPU, 0)) < 0)
		step = "KVM_CREATE_VCPU";
	else if ((mmap_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0)) <= 0)
		step = "KVM_GET_VCPU_MMAP_SIZE";
	else if ((run = mmap(NULL, (size_t)mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0)) == MAP_FAILED)
		step = "mmap(kvm_run)";
	else if (ioctl(vmfd, KVM_ARM_PREFERRED_TARGET, &init) < 0)
		step = "KVM_ARM_PREFERRED_TARGET";
	else if (ioctl(vcpu, KVM_ARM_VCPU_INIT, &init) < 0)
		step = "KVM_ARM_VCPU_INIT";
	else if (ioctl(vcpu, KVM_SET_ONE_REG, &reg_pc) < 0 || ioctl(vcpu, KVM_SET_ONE_REG, &reg_pstate) < 0)
		step = "KVM_SET_ONE_REG";
	if (step)
		*err = errno;
	else if (run_guest(vcpu, run, &g, deadline) < 0)
		step = g.stop_detail ? g.stop_detail : "KVM_RUN";
	long long t = now_ms();
	if (run != MAP_FAILED)
		munmap(run, (size_t)mmap_size);
	if (vcpu >= 0)
		close(vcpu);
	close(vmfd);
	*destroy_ms = now_ms() - t;
	if (!step) {
		struct readout rd, rc;
		guarded_read((const volatile uint64_t *)(mem + page), DATA_QWORDS, &rd);
		guarded_read((const volatile uint64_t *)mem, 1, &rc);
		*data = rd.faulted ? "fault" : classify(&rd);
		*code = rc.faulted ? "fault" : (uint32_t)rc.q[0] == first_word ? "intact" : rc.q[0] == 0 ? "zeroed" : "other";
	}
	munmap(mem, size);
	return step;
}

static void teardown_min(int kvm, int vm, long long deadline, int out)
{
	struct jbuf j;
	unsigned long type = vm == VM_PROTECTED ? KVM_VM_TYPE_ARM_PROTECTED : 0;
	const char *data[2] = {"?", "?"}, *code[2] = {"?", "?"}, *failed = NULL;
	long long destroy[2] = {0, 0}, t0 = now_ms();
	int err = 0, leaked = 0, which = 0;
	for (; which < 2 && !failed; which++) {
		failed = minimal_vm(kvm, type, which, deadline, &data[which], &code[which], &destroy[which], &err);
		if (failed)
			break;
		leaked |= !strcmp(data[which], "guest_pattern");
	}
	jresult(&j, P_TEARDOWN_MIN, vm, failed ? "error" : "ok");
	if (failed) {
		jstr(&j, "step", failed);
		jstr(&j, "memory", which ? "anonymous-shared" : "anonymous-private");
		if (err) {
			jint(&j, "errno", err);
			jstr(&j, "errno_name", errno_name(err));
		}
	} else {
		jstr(&j, "content", leaked ? "guest_pattern"
			 : !strcmp(data[0], data[1]) ? data[0] : "mixed");
	}
	jstr(&j, "private_data", data[0]);
	jstr(&j, "private_code", code[0]);
	jstr(&j, "shared_data", data[1]);
	jstr(&j, "shared_code", code[1]);
	jint(&j, "page_size", sysconf(_SC_PAGESIZE));
	jint(&j, "destroy_ms", destroy[0] + destroy[1]);
	jint(&j, "duration_ms", now_ms() - t0);
	jemit(&j, out);
}

static void vm_child(int kvm, int vm, unsigned probes, int timeout_s, int out)
{
	struct jbuf j;
	long long t0 = now_ms(), deadline = t0 + (long long)timeout_s * 1000;
	unsigned long type = vm == VM_PROTECTED ? KVM_VM_TYPE_ARM_PROTECTED : 0;
	const char *fail_step = NULL;
	int fail_errno = 0;

	alarm((unsigned)timeout_s + 5); /* backstop if the parent is gone */

	int vmfd;
	do
		vmfd = ioctl(kvm, KVM_CREATE_VM, type);
	while (vmfd < 0 && errno == EINTR);
	if (vmfd < 0) {
		int e = errno;
		char reason[96];
		jresult(&j, P_CREATE, vm, "refused");
		jhex(&j, "vm_type", type);
		jint(&j, "errno", e);
		jstr(&j, "errno_name", errno_name(e));
		jstr(&j, "strerror", strerror(e));
		jint(&j, "duration_ms", now_ms() - t0);
		jemit(&j, out);
		snprintf(reason, sizeof(reason), "KVM_CREATE_VM(type=0x%lx) refused: %s", type, errno_name(e));
		for (int p = P_CREATE + 1; p < NPROBES; p++)
			if (probes & (1u << p)) {
				jresult(&j, p, vm, "not_run");
				jstr(&j, "reason", reason);
				jemit(&j, out);
			}
		_exit(0);
	}
	jresult(&j, P_CREATE, vm, "ok");
	jhex(&j, "vm_type", type);
	jint(&j, "duration_ms", now_ms() - t0);
	jemit(&j, out);

	/* Setup: memslot, vCPU, registers. */
	long long ts = now_ms();
	uint8_t *mem = mmap(NULL, SLOT_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct kvm_run *run = MAP_FAILED;
	int vcpu = -1, mmap_size = 0, psci02 = 1;
	struct kvm_vcpu_init init;
	memset(&init, 0, sizeof(init));
	size_t code_words = 0;
	if (mem == MAP_FAILED) {
		fail_step = "mmap(memslot)";
		fail_errno = errno;
		goto setup_done;
	}
	for (size_t i = 0; i < DATA_QWORDS; i++)
		((uint64_t *)(mem + DATA_OFF))[i] = HOST_FILL;
	code_words = build_guest(mem, probes);
	if (!code_words) {
		fail_step = "build guest code";
		goto setup_done;
	}
	struct kvm_userspace_memory_region region = {
		.slot = 0, .flags = 0, .guest_phys_addr = SLOT_GPA, .memory_size = SLOT_SIZE,
		.userspace_addr = (uint64_t)(uintptr_t)mem,
	};
	if (ioctl(vmfd, KVM_SET_USER_MEMORY_REGION, &region) < 0) {
		fail_step = "KVM_SET_USER_MEMORY_REGION";
		fail_errno = errno;
		goto setup_done;
	}
	vcpu = ioctl(vmfd, KVM_CREATE_VCPU, 0);
	if (vcpu < 0) {
		fail_step = "KVM_CREATE_VCPU";
		fail_errno = errno;
		goto setup_done;
	}
	mmap_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (mmap_size <= 0) {
		fail_step = "KVM_GET_VCPU_MMAP_SIZE";
		fail_errno = errno;
		goto setup_done;
	}
	run = mmap(NULL, (size_t)mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED) {
		fail_step = "mmap(kvm_run)";
		fail_errno = errno;
		goto setup_done;
	}
	if (ioctl(vmfd, KVM_ARM_PREFERRED_TARGET, &init) < 0) {
		fail_step = "KVM_ARM_PREFERRED_TARGET";
		fail_errno = errno;
		goto setup_done;
	}
	init.features[0] |= 1u << KVM_ARM_VCPU_PSCI_0_2;
	if (ioctl(vcpu, KVM_ARM_VCPU_INIT, &init) < 0) {
		psci02 = 0;
		init.features[0] &= ~(1u << KVM_ARM_VCPU_PSCI_0_2);
		if (ioctl(vcpu, KVM_ARM_VCPU_INIT, &init) < 0) {
			fail_step = "KVM_ARM_VCPU_INIT";
			fail_errno = errno;
			goto setup_done;
		}
	}
	uint64_t pc = SLOT_GPA, pstate = 0x3c5; /* EL1h, D A I F masked */
	struct kvm_one_reg reg_pc = {
		.id = KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | (offsetof(struct kvm_regs, regs.pc) / 4),
		.addr = (uint64_t)(uintptr_t)&pc,
	};
	struct kvm_one_reg reg_pstate = {
		.id = KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | (offsetof(struct kvm_regs, regs.pstate) / 4),
		.addr = (uint64_t)(uintptr_t)&pstate,
	};
	if (ioctl(vcpu, KVM_SET_ONE_REG, &reg_pc) < 0) {
		fail_step = "KVM_SET_ONE_REG(pc)";
		fail_errno = errno;
		goto setup_done;
	}
	if (ioctl(vcpu, KVM_SET_ONE_REG, &reg_pstate) < 0) {
		fail_step = "KVM_SET_ONE_REG(pstate)";
		fail_errno = errno;
	}
setup_done:;
	static struct guestlog g;
	memset(&g, 0, sizeof(g));
	long long setup_ms = now_ms() - ts, tr = now_ms();
	if (!fail_step)
		run_guest(vcpu, run, &g, deadline);
	long long run_ms = now_ms() - tr;

	jopen(&j, "vm_setup");
	jstr(&j, "vm", vm_names[vm]);
	jbool(&j, "ok", !fail_step);
	if (fail_step) {
		jstr(&j, "step", fail_step);
		jint(&j, "errno", fail_errno);
		jstr(&j, "errno_name", errno_name(fail_errno));
	}
	jstr(&j, "memory", "anonymous-private");
	jhex(&j, "slot_gpa", SLOT_GPA);
	jhex(&j, "slot_size", SLOT_SIZE);
	jhex(&j, "mmio_gpa", MMIO_GPA);
	jint(&j, "guest_words", (long long)code_words);
	jint(&j, "target", init.target);
	jbool(&j, "psci_0_2", psci02);
	jint(&j, "setup_ms", setup_ms);
	jint(&j, "run_ms", run_ms);
	jint(&j, "exits", g.exits);
	jint(&j, "guest_exceptions", g.nexc);
	jbool(&j, "guest_done", g.done);
	if (!fail_step && !g.done) {
		jstr(&j, "stop", g.stop_detail ? g.stop_detail : "?");
		if (g.run_errno) {
			jint(&j, "run_errno", g.run_errno);
			jstr(&j, "run_errno_name", errno_name(g.run_errno));
		}
		if (g.stop_exit)
			jstr(&j, "exit_reason", exit_name(g.stop_exit));
	}
	jemit(&j, out);

	if (fail_step) {
		for (int p = P_CREATE + 1; p < NPROBES; p++)
			if (probes & (1u << p)) {
				jresult(&j, p, vm, "error");
				jstr(&j, "step", fail_step);
				jint(&j, "errno", fail_errno);
				jstr(&j, "errno_name", errno_name(fail_errno));
				jemit(&j, out);
			}
		_exit(0);
	}

	if (probes & (1u << P_GUEST_EL)) {
		if (port_seen(&g, PORT_EL)) {
			uint64_t v = port_val(&g, PORT_EL);
			jresult(&j, P_GUEST_EL, vm, "ok");
			jhex(&j, "current_el_raw", v);
			jint(&j, "current_el", (long long)((v >> 2) & 3));
			jint(&j, "duration_ms", run_ms);
			jemit(&j, out);
		} else {
			no_data(&j, P_GUEST_EL, vm, &g, STEP_EL, out);
		}
	}

	if (probes & (1u << P_HOST_READ)) {
		struct readout r;
		long long t = now_ms();
		int wrote = port_seen(&g, PORT_PATTERN);
		guarded_read((const volatile uint64_t *)(mem + DATA_OFF), DATA_QWORDS, &r);
		if (r.faulted) {
			jresult(&j, P_HOST_READ, vm, "fault");
			jfault(&j, &r);
		} else {
			jresult(&j, P_HOST_READ, vm, wrote ? "ok" : "error");
			if (!wrote)
				jstr(&j, "detail", "guest did not report writing the pattern");
			jbool(&j, "matches_guest_pattern", !strcmp(classify(&r), "guest_pattern"));
			jstr(&j, "content", classify(&r));
			jhex(&j, "first_qword", r.q[0]);
		}
		jbool(&j, "guest_wrote_pattern", wrote);
		jhex(&j, "expected", GUEST_PATTERN);
		jint(&j, "duration_ms", now_ms() - t);
		jemit(&j, out);
	}

	if (probes & (1u << P_HYPERCALLS))
		emit_hypercalls(&j, vm, &g, run_ms, out);

	if (probes & (1u << P_TEARDOWN)) {
		struct readout r, rc;
		int wrote = port_seen(&g, PORT_PATTERN);
		long long t = now_ms();
		int e1 = close(vcpu) < 0 ? errno : 0;
		munmap(run, (size_t)mmap_size);
		int e2 = close(vmfd) < 0 ? errno : 0;
		long long destroy_ms = now_ms() - t;
		guarded_read((const volatile uint64_t *)(mem + DATA_OFF), DATA_QWORDS, &r);
		guarded_read((const volatile uint64_t *)mem, 1, &rc);
		/* Read again a moment later: tells a wipe that is only late from none at all. */
		struct readout rl;
		usleep(TEARDOWN_REREAD_MS * 1000);
		guarded_read((const volatile uint64_t *)(mem + DATA_OFF), DATA_QWORDS, &rl);
		if (r.faulted) {
			jresult(&j, P_TEARDOWN, vm, "fault");
			jfault(&j, &r);
		} else {
			jresult(&j, P_TEARDOWN, vm, "ok");
			jstr(&j, "content", classify(&r));
			jhex(&j, "first_qword", r.q[0]);
		}
		jstr(&j, "content_later", rl.faulted ? "fault" : classify(&rl));
		jint(&j, "reread_after_ms", TEARDOWN_REREAD_MS);
		jbool(&j, "guest_wrote_pattern", wrote);
		/* The code page: host-written, only executed by the guest. */
		if (rc.faulted)
			jstr(&j, "code_page", "fault");
		else
			jstr(&j, "code_page", (uint32_t)rc.q[0] == enc_movz(28, MMIO_GPA & 0xffff, 0) ? "intact"
					      : rc.q[0] == 0 ? "zeroed" : "other");
		jint(&j, "destroy_ms", destroy_ms);
		if (e1 || e2)
			jstr(&j, "close_error", errno_name(e1 ? e1 : e2));
		jint(&j, "duration_ms", now_ms() - t);
		jemit(&j, out);
	}

	if (probes & (1u << P_TEARDOWN_MIN))
		teardown_min(kvm, vm, deadline, out);
	_exit(0);
}

/* ----------------------------------------------------------------- parent */

struct tally { char name[24]; int count; };
static struct tally tallies[16];
static int total_results;

static void count_outcome(const char *line)
{
	const char *o = strstr(line, "\"outcome\":\"");
	if (!o || strncmp(line, "{\"record\":\"result\"", 18))
		return;
	o += 11;
	size_t n = strcspn(o, "\"");
	if (n >= sizeof(tallies[0].name))
		n = sizeof(tallies[0].name) - 1;
	total_results++;
	for (int i = 0; i < 16; i++) {
		if (!tallies[i].name[0]) {
			memcpy(tallies[i].name, o, n);
			tallies[i].name[n] = 0;
		}
		if (strlen(tallies[i].name) == n && !strncmp(tallies[i].name, o, n)) {
			tallies[i].count++;
			return;
		}
	}
}

static void out_line(struct jbuf *j)
{
	count_outcome(j->s);
	jemit(j, STDOUT_FILENO);
}

/* Forward a child's line; remember which probes it reported. */
static void forward(const char *line, size_t n, unsigned *reported)
{
	char buf[16384];
	if (n >= sizeof(buf))
		return;
	memcpy(buf, line, n);
	buf[n] = 0;
	for (int p = 0; p < NPROBES; p++) {
		char key[48];
		snprintf(key, sizeof(key), "\"probe\":\"%s\"", probe_names[p]);
		if (strstr(buf, key))
			*reported |= 1u << p;
	}
	count_outcome(buf);
	buf[n] = '\n';
	ssize_t off = 0;
	while (off < (ssize_t)n + 1) {
		ssize_t w = write(STDOUT_FILENO, buf + off, n + 1 - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		off += w;
	}
}

static void run_vm(int kvm, int vm, unsigned probes, int timeout_s)
{
	int fds[2];
	struct jbuf j;
	unsigned expected = probes | 1u << P_CREATE, reported = 0;
	long long t0 = now_ms(), deadline = t0 + (long long)timeout_s * 1000;
	if (pipe(fds) < 0) {
		jopen(&j, "error");
		jstr(&j, "detail", "pipe failed");
		jint(&j, "errno", errno);
		out_line(&j);
		return;
	}
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0) {
		jopen(&j, "error");
		jstr(&j, "detail", "fork failed");
		jint(&j, "errno", errno);
		out_line(&j);
		return;
	}
	if (pid == 0) {
		close(fds[0]);
		vm_child(kvm, vm, probes, timeout_s, fds[1]);
		_exit(0);
	}
	close(fds[1]);

	static char acc[65536];
	size_t len = 0;
	int timed_out = 0, eof = 0;
	while (!eof) {
		long long left = deadline - now_ms();
		if (left <= 0) {
			timed_out = 1;
			break;
		}
		struct pollfd pfd = {fds[0], POLLIN, 0};
		int r = poll(&pfd, 1, (int)(left > 1000 ? 1000 : left));
		if (r < 0 && errno != EINTR)
			break;
		if (r <= 0)
			continue;
		if (len == sizeof(acc))
			len = 0; /* a runaway line: drop it */
		ssize_t n = read(fds[0], acc + len, sizeof(acc) - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			eof = 1;
			break;
		}
		len += (size_t)n;
		char *nl;
		while ((nl = memchr(acc, '\n', len))) {
			size_t line = (size_t)(nl - acc);
			forward(acc, line, &reported);
			memmove(acc, nl + 1, len - line - 1);
			len -= line + 1;
		}
	}
	/* A partial last line (child died mid-write) is dropped: it is not valid JSON. */
	int status = 0, reaped = 0;
	if (timed_out)
		kill(pid, SIGKILL);
	/* Teardown of a protected VM can take a second or more: wait, bounded. */
	long long wait_until = (timed_out ? now_ms() : deadline) + 5000;
	while (now_ms() < wait_until) {
		pid_t w = waitpid(pid, &status, WNOHANG);
		if (w == pid) {
			reaped = 1;
			break;
		}
		if (!timed_out && now_ms() > deadline) {
			timed_out = 1;
			kill(pid, SIGKILL);
		}
		struct timespec ts = {0, 20 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	close(fds[0]);
	if (!reaped && !timed_out) {
		timed_out = 1;
		kill(pid, SIGKILL);
	}

	jopen(&j, "vm_child");
	jstr(&j, "vm", vm_names[vm]);
	jint(&j, "pid", pid);
	if (timed_out) {
		jstr(&j, "status", "timeout");
		jint(&j, "timeout_s", timeout_s);
	} else if (!reaped) {
		jstr(&j, "status", "unreaped");
	} else if (WIFSIGNALED(status)) {
		jstr(&j, "status", WTERMSIG(status) == SIGALRM ? "timeout" : "signaled");
		jstr(&j, "signal", signal_name(WTERMSIG(status)));
	} else {
		jstr(&j, "status", "exited");
		jint(&j, "exit_code", WEXITSTATUS(status));
	}
	jbool(&j, "reaped", reaped);
	jint(&j, "duration_ms", now_ms() - t0);
	out_line(&j);

	/* Probes the child never reported: the first one was running when it died. */
	int first = 1;
	for (int p = 0; p < NPROBES; p++) {
		if (!(expected & 1u << p) || (reported & 1u << p))
			continue;
		if (first) {
			int to = timed_out || (reaped && WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM);
			jresult(&j, p, vm, to ? "timeout" : "crashed");
			if (to)
				jint(&j, "timeout_s", timeout_s);
			else if (reaped && WIFSIGNALED(status))
				jstr(&j, "signal", signal_name(WTERMSIG(status)));
			else if (reaped)
				jint(&j, "exit_code", WEXITSTATUS(status));
			jstr(&j, "detail", "the VM child ended before reporting this probe");
			first = 0;
		} else {
			char reason[96];
			jresult(&j, p, vm, "not_run");
			snprintf(reason, sizeof(reason), "the VM child ended before this probe (%s)",
				 timed_out ? "timeout" : "crash");
			jstr(&j, "reason", reason);
		}
		out_line(&j);
	}
}

static void usage(FILE *f)
{
	fprintf(f, "usage: elprobe [--timeout SECONDS] [--vm normal|protected|both] [probe ...]\n"
		   "probes: create guest_el host_read hypercalls teardown teardown_min (default: all)\n"
		   "output: JSON lines on stdout (see the comment at the top of elprobe.c)\n");
}

static void usage_error(const char *detail)
{
	struct jbuf j;
	jopen(&j, "fatal");
	jstr(&j, "error", "usage");
	jstr(&j, "detail", detail);
	jemit(&j, STDOUT_FILENO);
	fprintf(stderr, "elprobe: %s\n", detail);
	usage(stderr);
	exit(2);
}

int main(int argc, char **argv)
{
	int timeout_s = 30;
	unsigned vms = 3, probes = 0;
	struct jbuf j;
	long long t0 = now_ms();

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			usage(stdout);
			return 0;
		} else if (!strcmp(a, "--version")) {
			printf("elprobe %s\n", ELPROBE_VERSION);
			return 0;
		} else if (!strcmp(a, "--timeout") || !strncmp(a, "--timeout=", 10)) {
			const char *v = a[9] == '=' ? a + 10 : (i + 1 < argc ? argv[++i] : NULL);
			char *end;
			long t = v ? strtol(v, &end, 10) : 0;
			if (!v || *end || t < 1 || t > 3600)
				usage_error("--timeout needs whole seconds between 1 and 3600");
			timeout_s = (int)t;
		} else if (!strcmp(a, "--vm") || !strncmp(a, "--vm=", 5)) {
			const char *v = a[4] == '=' ? a + 5 : (i + 1 < argc ? argv[++i] : NULL);
			if (v && !strcmp(v, "normal"))
				vms = 1;
			else if (v && !strcmp(v, "protected"))
				vms = 2;
			else if (v && !strcmp(v, "both"))
				vms = 3;
			else
				usage_error("--vm takes normal, protected or both");
		} else {
			int found = 0;
			for (int p = 0; p < NPROBES; p++)
				if (!strcmp(a, probe_names[p])) {
					probes |= 1u << p;
					found = 1;
				}
			if (!strcmp(a, "all")) {
				probes |= (1u << NPROBES) - 1;
				found = 1;
			}
			if (!found) {
				char msg[160];
				snprintf(msg, sizeof(msg), "unknown argument or probe '%.100s'", a);
				usage_error(msg);
			}
		}
	}
	if (!probes)
		probes = (1u << NPROBES) - 1;
	probes |= 1u << P_CREATE;
	signal(SIGPIPE, SIG_IGN);

	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_fault;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGSEGV, &sa, NULL);
	sigaction(SIGBUS, &sa, NULL);

	struct utsname u;
	memset(&u, 0, sizeof(u));
	uname(&u);
	jopen(&j, "start");
	jstr(&j, "probe_version", ELPROBE_VERSION);
	jraw(&j, ",\"uname\":{");
	jraw(&j, "\"sysname\":");
	jescaped(&j, u.sysname);
	jstr(&j, "release", u.release);
	jstr(&j, "version", u.version);
	jstr(&j, "machine", u.machine);
	jstr(&j, "nodename", u.nodename);
	jraw(&j, "}");
	jraw(&j, ",\"argv\":[");
	for (int i = 0; i < argc; i++) {
		jraw(&j, i ? "," : "");
		jescaped(&j, argv[i]);
	}
	jraw(&j, "]");
	jint(&j, "pid", getpid());
	jint(&j, "page_size", sysconf(_SC_PAGESIZE));
	jint(&j, "timeout_s", timeout_s);
	jraw(&j, ",\"vms\":[%s%s%s]", vms & 1 ? "\"normal\"" : "", vms == 3 ? "," : "", vms & 2 ? "\"protected\"" : "");
	jraw(&j, ",\"probes\":[");
	for (int p = 0, n = 0; p < NPROBES; p++)
		if (probes & 1u << p)
			jraw(&j, "%s\"%s\"", n++ ? "," : "", probe_names[p]);
	jraw(&j, "]");
	{
		char cmdline[1024] = "";
		int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
		if (fd >= 0) {
			ssize_t n = read(fd, cmdline, sizeof(cmdline) - 1);
			cmdline[n > 0 ? n : 0] = 0;
			close(fd);
			cmdline[strcspn(cmdline, "\n")] = 0;
			jstr(&j, "cmdline", cmdline);
		}
	}
	jbool(&j, "encodings_ok", encodings_ok());
	jemit(&j, STDOUT_FILENO);

	int kvm = open("/dev/kvm", O_RDWR);
	if (kvm < 0 || !encodings_ok()) {
		int e = kvm < 0 ? errno : 0;
		jopen(&j, "fatal");
		jstr(&j, "error", kvm < 0 ? "open /dev/kvm" : "instruction encoder self-check failed");
		if (kvm < 0) {
			jint(&j, "errno", e);
			jstr(&j, "errno_name", errno_name(e));
			jstr(&j, "strerror", strerror(e));
		}
		jemit(&j, STDOUT_FILENO);
		jopen(&j, "summary");
		jbool(&j, "complete", 0);
		jint(&j, "results", 0);
		jraw(&j, ",\"outcomes\":{}");
		jint(&j, "duration_ms", now_ms() - t0);
		jemit(&j, STDOUT_FILENO);
		return 3;
	}
	jopen(&j, "kvm");
	jint(&j, "api_version", ioctl(kvm, KVM_GET_API_VERSION, 0));
	jint(&j, "max_ipa_bits", ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_ARM_VM_IPA_SIZE));
	jint(&j, "vcpu_mmap_size", ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0));
	jemit(&j, STDOUT_FILENO);

	for (int vm = VM_NORMAL; vm <= VM_PROTECTED; vm++)
		if (vms & (1u << vm))
			run_vm(kvm, vm, probes, timeout_s);

	jopen(&j, "summary");
	jbool(&j, "complete", 1);
	jint(&j, "results", total_results);
	jraw(&j, ",\"outcomes\":{");
	for (int i = 0; i < 16 && tallies[i].name[0]; i++)
		jraw(&j, "%s\"%s\":%d", i ? "," : "", tallies[i].name, tallies[i].count);
	jraw(&j, "}");
	jint(&j, "duration_ms", now_ms() - t0);
	jemit(&j, STDOUT_FILENO);
	return 0;
}
