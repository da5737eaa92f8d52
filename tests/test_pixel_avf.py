"""The Pixel simulator enforces what a phone enforces, and the Android suite's real paths pass it.

In-process: pkvmlab's AdbDriver and SerialFastbootDriver from a labgrid
environment (envs/pixel-sim.yaml with absolute tool paths) against simulated
phones, the way tests/test_pixel_sim.py does.  End to end: ``pkvmlab run`` of the
android suite (tests/test_android_sim.py's helpers).
"""

import struct
import sys
import time
import zlib

import pytest
from labgrid import Environment
from labgrid.driver.exception import ExecutionError
from test_android_sim import ROOT, SERIAL, env_file, junit, outcome, run

from pkvmlab.sim import pixel as sim

sys.path.insert(0, str(ROOT / "suites" / "android"))
from avf_facts import (  # noqa: E402
    CROSVM,
    MICRODROID_INITRD,
    MICRODROID_KERNEL,
    VM,
    kvm_services,
    parse_guest_console,
    parse_vm_list,
    parse_vm_subcommands,
)
from instance_img import instance_disk  # noqa: E402

WORK = "/data/local/tmp"


@pytest.fixture
def simdir(simdir, monkeypatch):
    """The shared simulator directory (tests/conftest.py), and a VM nobody stops must not outlive the test."""
    monkeypatch.setenv("PKVMLAB_PIXEL_SIM_VM_LIMIT", "20")
    return simdir


@pytest.fixture
def env(tmp_path, simdir):
    environment = Environment(str(env_file(tmp_path)))
    yield environment
    environment.cleanup()


def rooted_adb(env, **device):
    sim.create_device(SERIAL, "pixel-8", **device)
    adb = env.get_target("main").get_driver("AdbDriver")
    adb.root()
    return adb


# -- pvmfw's payload checks (guest.py) ----------------------------------------------------------------------------


def crosvm(adb, tmp_path, *extra):
    console = f"{WORK}/console.txt"
    adb.run(f"rm -f {console}")
    out, err, code = adb.run(f"{CROSVM} run --disable-sandbox --protected-vm --mem 256 --cpus 1 "
                             f"--serial type=file,path={console},hardware=serial,console {' '.join(extra)} "
                             f"{MICRODROID_KERNEL}")
    local = tmp_path / "console.txt"
    adb.get(console, str(local))
    return parse_guest_console(local.read_text()), code, err


def pushed_instance(adb, tmp_path):
    local = tmp_path / "instance.img"
    local.write_bytes(instance_disk())
    adb.put(str(local), f"{WORK}/instance.img")
    return f"--block path={WORK}/instance.img"


def test_pvmfw_refuses_the_microdroid_kernel_without_its_initrd(env, tmp_path):
    adb = rooted_adb(env)
    guest, _, _ = crosvm(adb, tmp_path, pushed_instance(adb, tmp_path))
    assert guest.pvmfw and not guest.payload_handoff and guest.kernel_release is None
    assert guest.pvmfw_failure.startswith("[ERROR] Failed to verify the payload: Invalid metadata (no initrd given, "
                                          "but the kernel's vbmeta has 3 hash descriptors")


def test_pvmfw_refuses_a_payload_without_an_instance_image(env, tmp_path):
    adb = rooted_adb(env)
    guest, _, _ = crosvm(adb, tmp_path, f"--initrd {MICRODROID_INITRD['full']}")
    assert guest.pvmfw_failure == "[ERROR] Failed to get instance.img salt: Failed to find the instance.img partition"
    assert guest.kernel_release is None


def test_pvmfw_refuses_an_initrd_its_vbmeta_does_not_describe(env, tmp_path):
    adb = rooted_adb(env)
    (tmp_path / "initrd").write_text("some other initrd\n")
    adb.put(str(tmp_path / "initrd"), f"{WORK}/initrd")
    guest, _, _ = crosvm(adb, tmp_path, f"--initrd {WORK}/initrd", pushed_instance(adb, tmp_path))
    assert "matches neither initrd_normal nor initrd_debug" in guest.pvmfw_failure


def test_pvmfw_accepts_kernel_initrd_and_instance_image_as_avf_passes_them(env, tmp_path):
    adb = rooted_adb(env)
    guest, code, err = crosvm(adb, tmp_path, f"--initrd {MICRODROID_INITRD['full']}", pushed_instance(adb, tmp_path))
    assert code == 0 and not [line for line in err if "ERROR" in line], err
    assert guest.pvmfw and guest.payload_handoff and guest.pvmfw_failure is None
    assert guest.kernel_release and guest.guest_el == "EL1"
    assert {"HYP_MEMINFO", "MEM_SHARE", "MEM_UNSHARE"} <= set(guest.services)


def test_no_firmware_mode_boots_the_kernel_without_pvmfw(env, tmp_path):
    adb = rooted_adb(env, pvmfw_loaded=False)
    _, err, code = adb.run(f"{CROSVM} run --protected-vm {MICRODROID_KERNEL}")
    assert code == 1 and "failed to enable protected VM: No such file or directory (os error 2)" in err[0]
    out, err, code = adb.run(f"{CROSVM} run --protected-vm-without-firmware --serial type=stdout "
                             f"{MICRODROID_KERNEL}")
    guest = parse_guest_console("\n".join(out))
    assert code == 0 and not guest.pvmfw and guest.kernel_release and guest.guest_el == "EL1"


def test_instance_disk_is_a_valid_gpt_with_the_vm_instance_header():
    disk = instance_disk()
    header = disk[512:1024]
    assert header[:8] == b"EFI PART"
    size, crc = struct.unpack_from("<II", header, 12)
    assert zlib.crc32(header[:16] + b"\0\0\0\0" + header[20:size]) == crc
    entries_lba, count, entry_size, entries_crc = struct.unpack_from("<QIII", header, 72)
    entries = disk[entries_lba * 512:entries_lba * 512 + count * entry_size]
    assert zlib.crc32(entries) == entries_crc
    first = struct.unpack_from("<Q", entries, 32)[0]
    assert entries[56:56 + 22].decode("utf-16-le") == "vm-instance"
    assert disk[first * 512:first * 512 + 21] == b"Android-VM-instance\x01\x00"
    backup = disk[-512:]
    assert backup[:8] == b"EFI PART" and struct.unpack_from("<Q", backup, 24)[0] == len(disk) // 512 - 1


def test_kvm_services_decode_the_bitmap():
    assert kvm_services("0x0000001d") == ["FEATURES", "HYP_MEMINFO", "MEM_SHARE", "MEM_UNSHARE"]
    assert kvm_services("0x00000003") == ["FEATURES", "PTP"]


# -- the vm tool: per Android version, and a Microdroid that never ends by itself ---------------------------------


def test_android_13_vm_has_no_run_microdroid_but_stop(env):
    adb = rooted_adb(env, android_version=13)
    out, _, _ = adb.run(f"{VM} --help")
    assert "run-microdroid" not in parse_vm_subcommands(out) and "stop" in parse_vm_subcommands(out)
    _, err, code = adb.run(f"{VM} run-microdroid --protected")
    assert code == 1 and err[0].startswith("error: Found argument 'run-microdroid' which wasn't expected")
    out, _, _ = adb.run(f"{VM} run-app --help")
    assert any("--cpus" in line for line in out) and not any("--cpu-topology" in line for line in out)


def test_android_15_vm_has_run_microdroid_and_no_stop(env):
    adb = rooted_adb(env, android_version=15)
    out, _, _ = adb.run(f"{VM} --help")
    subcommands = parse_vm_subcommands(out)
    assert "run-microdroid" in subcommands and "stop" not in subcommands
    _, err, code = adb.run(f"{VM} stop 2048")
    assert code == 2 and err[0] == "error: unrecognized subcommand 'stop'"
    _, err, code = adb.run(f"{VM} run-microdroid --cpus 1")
    assert code == 2 and err[0] == "error: unexpected argument '--cpus' found"


def test_microdroid_with_the_default_payload_never_ends_by_itself(env):
    adb = rooted_adb(env)
    started = time.monotonic()
    with pytest.raises(ExecutionError, match="did not finish within 3"):
        adb.run_timed(f"{VM} run-microdroid --protected", timeout=3)
    assert time.monotonic() - started >= 3
    time.sleep(0.3)    # the device-side vm got SIGHUP with its adb: nothing left running
    out, _, _ = adb.run(f"{VM} list")
    assert parse_vm_list(out) == []


def test_microdroid_ends_when_told_and_is_listed_while_it_runs(env):
    adb = rooted_adb(env, microdroid={"payload_exit_code": 7})
    lines, code = adb.run_timed(f"{VM} run-microdroid --protected", timeout=10)
    texts = [text for _, _, text in lines]
    assert code == 0 and "payload finished with exit code 7" in texts and texts[-1] == "VM ended: Shutdown"

    with sim.locked(sim.sim_dir() / SERIAL) as state:
        state["microdroid"]["payload_exit_code"] = None      # AOSP's default payload again: never ends
    watcher = Watcher(adb)
    lines, code = adb.run_timed(f"echo pid=$$; exec {VM} run-microdroid --protected", timeout=10, watch=watcher)
    assert code == 143 and watcher.listed == [2049]     # ended by SIGTERM, listed while it ran
    assert parse_vm_list(adb.run(f"{VM} list")[0]) == []


class Watcher:
    def __init__(self, adb):
        self.adb, self.pid, self.listed = adb, None, None

    def __call__(self, seconds, stream, text):
        if text and text.startswith("pid="):
            self.pid = text[4:]
        if text == "payload is ready":
            self.listed = parse_vm_list(self.adb.run(f"{VM} list")[0])
            self.adb.run(f"kill -TERM {self.pid}")


# -- the android suite end to end ----------------------------------------------------------------------------------


def case_property(props, case, key):
    return props.get(f"{case}.{key}")


def test_crosvm_and_microdroid_pass_in_under_30_s_on_the_simulators_timings(tmp_path, simdir, monkeypatch):
    monkeypatch.setenv(sim.ENV_TIME_SCALE, "1")       # the simulator's own timings, not 0
    sim.create_device(SERIAL, "pixel-8")

    proc, run_dir = run(tmp_path, None, ROOT / "suites" / "android", "-k", "microdroid or crosvm")

    assert proc.returncode == 0, proc.stdout[-3000:]
    _, props, cases = junit(run_dir)
    assert {name: outcome(case)[0] for name, case in cases.items()} == {
        "test_microdroid_protected_boot": "passed", "test_crosvm_protected_vm": "passed"}
    seconds = sum(float(case.get("time")) for case in cases.values())
    assert seconds < 30, f"crosvm + Microdroid took {seconds:.1f} s"
    assert case_property(props, "test_microdroid_protected_boot", "stopped").startswith("payload ready at ")
    assert case_property(props, "test_microdroid_protected_boot", "cid") == "2048"
    assert case_property(props, "test_crosvm_protected_vm", "protection") == "--protected-vm"
    assert case_property(props, "test_crosvm_protected_vm", "pvmfw") == (
        "accepted: kernel + initrd_debug + vm-instance disk")
    assert case_property(props, "test_crosvm_protected_vm", "guest_el") == "EL1"
    assert "MEM_SHARE" in case_property(props, "test_crosvm_protected_vm", "hypercalls")
    output = (run_dir / "microdroid" / "vm-output.txt").read_text()
    assert "exit 143" in output and "vm list then: [2048]; after: []" in output


def test_without_pvmfw_crosvm_runs_in_no_firmware_mode_and_says_so(tmp_path, simdir):
    sim.create_device(SERIAL, "pixel-8", pvmfw_loaded=False)

    proc, run_dir = run(tmp_path, None, ROOT / "suites" / "android", "-k", "crosvm")

    _, props, cases = junit(run_dir)
    assert outcome(cases["test_crosvm_protected_vm"])[0] == "passed", outcome(cases["test_crosvm_protected_vm"])
    protection = case_property(props, "test_crosvm_protected_vm", "protection")
    assert protection == ("--protected-vm-without-firmware (--protected-vm: [ERROR] failed to enable protected VM: "
                          "No such file or directory (os error 2): the bootloader loaded no pvmfw)")


def test_android_13_skips_microdroid_with_the_vm_tools_own_subcommands(tmp_path, simdir):
    sim.create_device(SERIAL, "pixel-8", android=13)

    proc, run_dir = run(tmp_path, None, ROOT / "suites" / "android", "-k", "microdroid")

    _, _, cases = junit(run_dir)
    kind, message = outcome(cases["test_microdroid_protected_boot"])
    assert kind == "skipped" and message == (
        "this Android's vm has no run-microdroid (it offers: run-app, run, stop, list, info, create-partition, "
        "create-idsig); Microdroid runs need Android 14 or newer"), message


FIRMWARE_PHONE_BOARD = """name: {name}
description: a phone whose firmware hypervisor keeps EL2 (test board)
soc: {soc}
console: adb
power: device
firmware: abl
delivery: fastboot
env: envs/pixel.yaml
boot_timeout: 60
ready_state: root
expect:
  boot_el: EL1
  kvm_mode: none
  pvm: false
  avf: true
  el2_holder: {holder}
"""


@pytest.mark.parametrize("model, holder, evidence", [
    ("gunyah-phone", "Gunyah", "OF: reserved mem: 0x0000000080000000..0x00000000805fffff (6144 KiB) nomap "
                               "non-reusable gunyah_hyp_region@80000000"),
    ("geniezone-phone", "GenieZone", "gzvm: GenieZone hypervisor (gzvm) ready"),
])
def test_firmware_hypervisor_phone_skips_the_pkvm_checks_with_the_evidence(tmp_path, simdir, model, holder,
                                                                              evidence):
    sim.create_device(SERIAL, model)
    board = tmp_path / f"{model}.yaml"
    board.write_text(FIRMWARE_PHONE_BOARD.format(name=model, soc=sim.MODELS[model]["soc"], holder=holder))
    env = env_file(tmp_path, {"  pkvmlab_image_set: pixel-sim\n": "",
                              "pkvmlab_board: pixel-8": f"pkvmlab_board: {model}"})

    proc, run_dir = run(tmp_path, env, board=board)

    _, _, cases = junit(run_dir)
    outcomes = {name: outcome(case) for name, case in cases.items()}
    failed = {name: o for name, o in outcomes.items() if o[0] in ("failure", "error")}
    assert not failed and proc.returncode == 0, (failed, proc.stdout[-2000:])
    line = f"EL2 held by {holder} (evidence: {evidence})"
    for name in ("test_hypervisor_properties", "test_vm_info", "test_microdroid_protected_boot",
                 "test_crosvm_protected_vm", "test_probe_completed", "test_host_read[protected]"):
        kind, message = outcomes[name]
        assert kind == "skipped" and line in message, (name, kind, message)
    assert outcomes["test_el2_holder"][0] == "passed" and outcomes["test_dev_kvm"][0] == "passed"


# -- fastboot and adb rules ----------------------------------------------------------------------------------------


def tool(name, *args):
    import subprocess
    done = subprocess.run([str(ROOT / "pkvmlab" / "sim" / "bin" / name), "-s", SERIAL, *args],
                          capture_output=True, text=True, timeout=30)
    return done.returncode, done.stdout + done.stderr


def test_logical_partitions_are_written_only_from_fastbootd(simdir):
    devdir = sim.create_device(SERIAL, "pixel-8", mode="bootloader")
    image = ROOT / "images" / "pixel-sim" / "vendor_dlkm.img"
    code, said = tool("fastboot", "flash", "vendor_dlkm_a", str(image))
    assert code == 1 and "FAILED (remote: 'Partition vendor_dlkm_a not found')" in said
    assert "only fastbootd ('fastboot reboot fastboot') can write it" in said
    assert tool("fastboot", "getvar", "is-userspace")[1].startswith("is-userspace: no")
    assert tool("fastboot", "reboot", "fastboot")[0] == 0
    assert tool("fastboot", "getvar", "is-userspace")[1].startswith("is-userspace: yes")
    assert tool("fastboot", "getvar", "is-logical:vendor_dlkm_a")[1].startswith("is-logical:vendor_dlkm_a: yes")
    code, said = tool("fastboot", "flash", "vendor_dlkm_a", str(image))
    assert code == 0, said
    assert "vendor_dlkm_a" in sim.load_state(devdir)["written"]
    code, said = tool("fastboot", "boot", str(ROOT / "images" / "pixel-sim" / "boot.img"))
    assert code == 1 and "Unrecognized command boot" in said      # fastbootd cannot boot an image


@pytest.mark.parametrize("build, allowed", [("userdebug", True), ("eng", True), ("user", False)])
def test_adb_root_only_on_userdebug_and_eng_builds(simdir, build, allowed):
    sim.create_device(SERIAL, "pixel-8", build_type=build)
    code, said = tool("adb", "root")
    if allowed:
        assert code == 0 and said.strip() == "restarting adbd as root"
    else:
        assert code == 1 and said.strip() == "adbd cannot run as root in production builds"
