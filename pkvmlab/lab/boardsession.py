"""BoardSession: a booted board, its shell, and the facts measured on it.

What the suites get: one object per run that runs commands on the board,
knows which board and images it is, and holds the boot facts parsed once from
the kernel's own log (the console log where the board has one, else ``dmesg``
over the command channel, e.g. adb on a phone).  labgrid glue only: no pytest.
"""

import shlex
from dataclasses import dataclass, field

from labgrid.driver.exception import ExecutionError

from ..facts.console import BootFacts, parse_boot_log

_MARK = "pkvmlab-fact:"
ANDROID_WORK_DIR = "/data/local/tmp/pkvmlab"   # writable and executable for root and shell on Android
FACTS_COMMAND = (
    f"echo {_MARK}release=$(uname -r); "
    f"echo {_MARK}machine=$(uname -m); "
    f"if [ -e /dev/kvm ]; then echo {_MARK}dev_kvm=yes; else echo {_MARK}dev_kvm=no; fi; "
    f"echo {_MARK}cmdline=$(cat /proc/cmdline); "
    f"echo {_MARK}elprobe=$(command -v elprobe || echo none)"
)


@dataclass
class RuntimeFacts:
    """What the running system says about itself, asked over its shell."""

    release: str = None
    machine: str = None
    dev_kvm: bool = None
    cmdline: str = None
    elprobe: str = None     # the EL probe's path on the board, "none" when it has none; optional

    @property
    def complete(self):
        return None not in (self.release, self.machine, self.dev_kvm, self.cmdline)

    @classmethod
    def parse(cls, lines):
        values = {}
        for line in lines:
            if line.startswith(_MARK) and "=" in line:
                key, value = line[len(_MARK):].split("=", 1)
                values[key] = value.strip()
        dev_kvm = {"yes": True, "no": False}.get(values.get("dev_kvm"))
        return cls(release=values.get("release"), machine=values.get("machine"), dev_kvm=dev_kvm,
                   cmdline=values.get("cmdline"), elprobe=values.get("elprobe"))


@dataclass
class BoardSession:
    board: object                  # pkvmlab.boards.Board
    target: object                 # labgrid Target
    strategy: object
    run_dir: object                # pathlib.Path of reports/<run-id>/
    provisioned: object = None     # pkvmlab.images.provision.Provisioned
    console_log: object = None     # pkvmlab.lab.consolelog.ConsoleLog, where the board has a console
    facts: BootFacts = None
    runtime: RuntimeFacts = None
    console_facts: BootFacts = None
    extra: dict = field(default_factory=dict)

    @property
    def command(self):
        return self.target.get_driver("CommandProtocol")

    @property
    def boot_seconds(self):
        return getattr(self.strategy, "boot_seconds", None)

    def run(self, cmd, timeout=30):
        """Run ``cmd`` on the board; returns (stdout lines, exit code).

        Output that is not UTF-8 (a test that wrote binary to the console, line noise on a serial
        cable) is decoded with U+FFFD in place of the bad bytes: it must not fail whichever test
        reads next.  The console log keeps the raw bytes.
        """
        stdout, _, code = self.command.run(cmd, timeout=timeout, decodeerrors="replace")
        return stdout, code

    def drain_console(self, limit=1 << 20):
        """Read what the board printed and nobody read yet, so the console log has it now.

        Called at test boundaries: bytes a test made the board print land in the
        console log (and that test's excerpt) before the next test starts.
        Only what has already arrived is read (no wait); a console that is
        gone or not active is left alone.
        """
        if self.console_log is None:
            return 0
        from labgrid.binding import BindingState
        from pexpect import ExceptionPexpect
        console = self.console_log.console
        if getattr(console, "state", None) is not BindingState.active:
            return 0
        read = 0
        try:
            while read < limit:
                data = console.read(size=4096, timeout=0.0)
                if not data:        # a closed socket reads empty
                    break
                read += len(data)
        except (ExceptionPexpect, OSError):   # nothing more, or the console is gone (the test says why)
            pass
        return read

    def run_check(self, cmd, timeout=30):
        lines, code = self.run(cmd, timeout)
        if code != 0:
            raise ExecutionError(cmd, lines, [])
        return lines

    def kernel_log(self):
        """The kernel's messages: the console log if we have one, else dmesg, kept as ``dmesg.txt``.

        A phone has no console the harness can read; the run keeps the text its
        boot facts were read from.
        """
        if self.console_log is not None:
            return self.console_log.text()
        lines, code = self.run("dmesg", timeout=60)
        text = "\n".join(lines) + "\n"
        (self.run_dir / "dmesg.txt").write_text(text + ("" if code == 0 else f"(dmesg exit {code})\n"))
        return text

    def collect_facts(self):
        """The runtime facts, then the kernel log parsed.

        pkvmlab's own initramfs (``images/initramfs/init``) prints the runtime facts
        on the console just before it starts the shell, in the form FACTS_COMMAND
        prints them; where this boot's console shows all of them, that saves a
        round trip (0.1 s).  Any other board (its own root filesystem, a phone) is
        asked over its shell.
        """
        runtime = None
        if self.console_log is not None:
            runtime = RuntimeFacts.parse(self.console_log.text_of_last_boot().splitlines())
        if runtime is None or not runtime.complete:
            lines, _ = self.run(FACTS_COMMAND)
            runtime = RuntimeFacts.parse(lines)
        self.runtime = runtime
        self.facts = parse_boot_log(self.kernel_log())
        if self.console_log is not None:
            self.console_facts = self.facts
        return self.facts

    @property
    def work_dir(self):
        """A writable directory on the board for pushed tools and their output."""
        return ANDROID_WORK_DIR if self.board.device_tools else "/tmp"

    def install_probe(self):
        """The EL probe's path on the board: the initramfs's own, else pushed from the image set.

        The same static binary serves every board; boards without it in their
        image (phones, dev boards) get the provisioned copy over the target's
        FileTransferProtocol (adb push, scp).  Where the runtime facts already say
        (``elprobe=`` of FACTS_COMMAND, which pkvmlab's initramfs prints at boot), the
        board is not asked again.
        """
        known = self.runtime.elprobe if self.runtime is not None else None
        if known is None:
            lines, code = self.run("command -v elprobe")
            known = lines[-1].strip() if code == 0 and lines else "none"
        if known.startswith("/"):
            return known
        local = self.provisioned.path("elprobe") if self.provisioned else None
        if local is None or not local.exists():
            raise FileNotFoundError(f"board {self.board.name} has no elprobe and its image set "
                                    f"({self.provisioned.directory if self.provisioned else 'none'}) built none: "
                                    "add 'elprobe: elprobe' to the image set")
        remote = f"{self.work_dir}/elprobe"
        self.run_check(f"mkdir -p {shlex.quote(self.work_dir)}")
        self.target.get_driver("FileTransferProtocol").put(str(local), remote)
        self.run_check(f"chmod 755 {shlex.quote(remote)}")
        return remote
