"""Drivers for a node's hardware: the modules that drive the devices it registered without a driver.

The node reports each PCI, virtio and SCSI device's modalias, the driver bound to it, and its loaded modules
(agent.hwprobe). For each device with no driver, the kernel's own tables in the sysroot (modules.alias,
matched as libkmod does, then modules.dep for the order) name the modules; those neither built in nor
loaded go back in the registration's answer, dependencies first, with the firmware files they name
(beoboot.resolve.firmware) in a form the node's kernel reads. Their files are hashed into the job hub's
object store, so the node fetches them through its libcache like any job's file; only the node they
were planned for may fetch them (JobHub.grant). Stage 3 asks again (DRIVERS_PATH) for the devices the
first drivers brought (a SATA disk behind ahci needs sd_mod).

A cluster's nodes are alike: a plan is kept per (kernel, devices without a driver, loaded modules).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from agent import protocol as p
from beoboot.errors import BeobootError
from beoboot.master.objects import ObjectStore
from beoboot.resolve import firmware
from beoboot.resolve.kmod import MODULE_SUFFIXES, KernelModules, normalise_module_name
from beoboot.resolve.sysroot import Sysroot

log = logging.getLogger("beoboot.master.hwdrivers")

PLANS_KEPT = 64  # distinct hardware shapes remembered; a cluster has a few
COMPRESSED_MODULE = tuple(s for s in MODULE_SUFFIXES if s != ".ko")
MODULE_MODE = 0o644
FIRMWARE_DIR = "/lib/firmware"


class DriverPlanner:
    def __init__(self, sysroot: str, objects: ObjectStore) -> None:
        self.sysroot = Sysroot(sysroot)
        self.objects = objects
        self._kernels: dict[str, KernelModules | None] = {}
        self._plans: OrderedDict[tuple[object, ...], tuple[p.DriverModule, ...]] = OrderedDict()
        self._lock = threading.Lock()

    def plan(self, hardware: p.Hardware, kernel: str) -> tuple[p.DriverModule, ...]:
        """The modules to send, in load order. Blocking (reads and hashes files): run it off the event loop."""
        devices = hardware.unbound()
        if not devices or not kernel:
            return ()
        loaded = frozenset(normalise_module_name(m) for m in hardware.modules)
        key = (kernel, tuple(devices), loaded)
        with self._lock:
            known = self._plans.get(key)
        if known is not None and all(self.objects.find(d.module.sha256) for d in known):
            return known
        kmods = self._kernel(kernel)
        found = self._plan(kmods, devices, loaded) if kmods is not None else ()
        with self._lock:
            self._plans[key] = found
            while len(self._plans) > PLANS_KEPT:
                self._plans.popitem(last=False)
        return found

    def _kernel(self, version: str) -> KernelModules | None:
        with self._lock:
            return self._kernel_locked(version)

    def _kernel_locked(self, version: str) -> KernelModules | None:
        if version not in self._kernels:
            try:
                self._kernels[version] = KernelModules(self.sysroot, version)
            except BeobootError as exc:
                log.warning("no drivers for nodes running kernel %s: %s", version, exc)
                self._kernels[version] = None
        return self._kernels[version]

    def _plan(
        self, kmods: KernelModules, devices: list[tuple[str, str]], loaded: frozenset[str]
    ) -> tuple[p.DriverModule, ...]:
        readable = firmware.decompress_for(self.sysroot, kmods.version)
        out: dict[str, p.DriverModule] = {}
        for device, modalias in devices:
            modules = kmods.lookup(modalias)
            if not modules or loaded & set(modules):
                continue  # no module for it, or one is loaded and did not bind it: sending it again won't
            try:
                needs = kmods.resolve(modules, reason=f"device {device}")
            except BeobootError as exc:
                log.warning("no driver for device %s (%s): %s", device, modalias, exc)
                continue
            for need in needs:
                if need.name in loaded or need.name in out:
                    continue
                out[need.name] = p.DriverModule(
                    need.name,
                    self._file(need.path, need.path),
                    self._firmware(kmods, need.name, readable),
                    compressed=need.path.endswith(COMPRESSED_MODULE),
                    device=device,
                )
        return tuple(out.values())

    def _firmware(self, kmods: KernelModules, module: str, readable: frozenset[str]) -> tuple[p.JobFile, ...]:
        files = []
        for fw in firmware.of_modules(kmods, [module]):
            if fw.path is None:
                log.warning("module %s asks for firmware %s, which the sysroot lacks (%s)", module, fw.name, fw.package)
            elif fw.suffix and fw.suffix not in readable:
                log.warning(
                    "module %s: firmware %s is %s-compressed, which kernel %s cannot read; not sent",
                    module,
                    fw.name,
                    fw.suffix,
                    kmods.version,
                )
            else:
                files.append(self._file(fw.path, f"{FIRMWARE_DIR}/{fw.name}{fw.suffix}"))
        return tuple(files)

    def _file(self, sysroot_path: str, node_path: str) -> p.JobFile:
        digest = self.objects.digest(str(self.sysroot.host(self.sysroot.resolve(sysroot_path).real)))
        return p.JobFile(node_path, MODULE_MODE, digest.sha256, digest.size)
