#!/usr/bin/python
# -*- coding: utf-8 -*-
# An Ansible module for bpfplan: apply or destroy an eBPF deployment
# described by a bpfplan manifest, reporting `changed` from bpfplan's own
# exit codes. Standard library and the Ansible module API only.
#
# SPDX-License-Identifier: MIT OR Apache-2.0

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: bpfplan
short_description: Apply or destroy an eBPF deployment with bpfplan
description:
  - Runs C(bpfplan) on the managed host to bring the kernel to what a bpfplan
    manifest describes (programs, maps, pins, attachments), or to remove it.
  - With O(state=present) it asks C(bpfplan plan MANIFEST --detailed-exitcode)
    first; exit 0 (in sync) means nothing runs and the task is C(ok), exit 2
    means C(bpfplan apply) runs and the task is C(changed).
  - With O(state=absent) it asks C(bpfplan status) whether anything of the
    deployment exists (a record, or any program, map, entry set or attachment
    not C(missing)); only then does C(bpfplan destroy) run.
  - Check mode runs only the read-only C(plan) and C(status) and predicts the
    change. Diff mode returns the text plan as the diff.
  - Every command runs on the managed host as the user the task runs as;
    bpfplan needs root (use C(become=true)). Environment variables
    bpfplan reads (C(BPFPLAN_STATE_DIR), C(BPFPLAN_CACHE_DIR),
    C(BPFPLAN_AUDIT_LOG), C(BPFPLAN_LOCK_TIMEOUT), C(BPFPLAN_COMMAND_TIMEOUT))
    pass through Ansible's C(environment) keyword.
version_added: "0.1.0"
author:
  - bpfplan contributors
options:
  manifest:
    description:
      - Path of the manifest (TOML) on the managed host.
      - Required unless O(plan) is given.
    type: path
  vars:
    description:
      - Values for variables the manifest declares in C([vars]); each becomes
        C(--var NAME=VALUE). Booleans are passed as C(true)/C(false).
      - Not with O(plan) (a saved plan holds its variables).
    type: dict
    default: {}
    aliases: [variables]
  state:
    description:
      - V(present) applies the manifest, V(absent) destroys what it deployed.
    type: str
    choices: [present, absent]
    default: present
  plan:
    description:
      - A saved plan on the managed host (from C(bpfplan plan MANIFEST --out FILE)),
        applied with C(bpfplan apply --plan FILE), which runs exactly the
        reviewed steps and objects. A saved plan is made on, and for, one host.
      - A saved plan applies once; applying it again, or after the deployment
        changed, fails as stale (bpfplan exit 1) and changes nothing.
      - Only with O(state=present).
    type: path
  binary:
    description:
      - The bpfplan executable, a name looked up on C(PATH) or a path.
    type: str
    default: bpfplan
  build_dir:
    description:
      - Where compiled objects go (C(--build-dir)); default bpfplan's own
        cache directory.
      - Give every run of a deployment the same one, and the same to any
        C(bpfplan status) run by hand; bpfplan counts another build directory
        as a changed program, and would replace the deployment.
    type: path
requirements:
  - bpfplan, bpftool (and clang, unless the objects are in the build cache) on the managed host
  - root on the managed host
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
notes:
  - C(changed) comes from bpfplan, never guessed; an apply that bpfplan
    reports as C(no_changes) is C(ok) even when the plan step said otherwise.
  - A failing command fails the task with bpfplan's error text in C(msg) (the
    failing bpftool or clang command and its stderr, the verifier log); apply
    has rolled back what it had done.
"""

EXAMPLES = r"""
- name: The socket redirect bypass on the web cgroup
  bpfplan:
    manifest: /usr/share/bpfplan/manifests/bypass.toml
    vars:
      cgroup: /sys/fs/cgroup/web.slice
      pin_dir: /sys/fs/bpf/bypass
  become: true

- name: What would change (nothing is run but plan and status)
  bpfplan:
    manifest: /etc/bpfplan/bypass.toml
  check_mode: true
  diff: true
  register: preview

- name: Apply a plan that was reviewed (made on this host with plan --out)
  bpfplan:
    plan: /var/tmp/bypass.plan
  become: true

- name: Remove it
  bpfplan:
    manifest: /usr/share/bpfplan/manifests/bypass.toml
    vars:
      cgroup: /sys/fs/cgroup/web.slice
      pin_dir: /sys/fs/bpf/bypass
    state: absent
  become: true

- name: Keep the state of a test apart from the host's
  bpfplan:
    manifest: /srv/manifests/bypass.toml
    build_dir: /tmp/t/build
  environment:
    BPFPLAN_STATE_DIR: /tmp/t/state
    BPFPLAN_AUDIT_LOG: /tmp/t/log/audit.jsonl
    BPFPLAN_CACHE_DIR: /tmp/t/cache
"""

RETURN = r"""
decision:
  description:
    - What was (or, in check mode, would be) done. For V(present), bpfplan's
      own decision from the JSON plan C(changes.decision), one of V(nothing),
      V(fresh), V(entries) (map entries only, nothing reloaded), V(repair)
      (only what drifted put back, by attaching or pinning again or writing
      entries; nothing reloaded), V(replace), V(recover) (finish or undo a
      killed run). For V(absent), V(nothing) or V(destroy). For a saved plan, its decision when it was made.
  returned: always
  type: str
  sample: replace
plan:
  description: The text plan (C(bpfplan plan), or C(plan --destroy) for V(absent), or C(bpfplan show FILE)).
  returned: always
  type: str
reason:
  description: bpfplan's reason for the decision (the drift it saw), if any.
  returned: when bpfplan gave one
  type: str
drift:
  description: What differs from the manifest, from the JSON plan (C(kind), C(name), C(place), C(state)).
  returned: state=present, without plan
  type: list
  elements: dict
summary:
  description: Counts of C(create), C(update), C(delete) and C(no_op) steps of what apply would run.
  returned: state=present
  type: dict
status:
  description:
    - C(bpfplan status --format json) parsed (C(in_sync), C(recorded),
      C(findings) with C(health.state), C(gauges)), taken after the change, or
      before it in check mode. Absent when status could not run.
  returned: when status ran
  type: dict
result:
  description: The last event of C(apply)/C(destroy) C(--format json) (C(outcome) is V(changed), V(no_changes), V(destroyed), V(stale) or V(failed)).
  returned: when apply or destroy ran
  type: dict
notes:
  description: The C(note) events of apply or destroy (decisions, warnings).
  returned: when apply or destroy ran
  type: list
  elements: str
steps_done:
  description: How many steps of apply or destroy changed something (outcome C(done); builds, probes and rollbacks not counted).
  returned: when apply or destroy ran
  type: int
commands:
  description: Every bpfplan command the module ran, in order.
  returned: always
  type: list
  elements: list
rc:
  description: Exit code of the failing command.
  returned: failure
  type: int
stdout:
  description: Standard output of the failing command.
  returned: failure
  type: str
stderr:
  description: Standard error of apply or destroy when they ran, else of the last command (warnings; on failure, the error).
  returned: always
  type: str
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule


class Bpfplan(object):
    def __init__(self, module):
        self.module = module
        p = module.params
        binary = p["binary"]
        if os.sep in binary:
            if not os.access(binary, os.X_OK):
                module.fail_json(msg="bpfplan binary %s is not executable" % binary)
            self.bin = binary
        else:
            self.bin = module.get_bin_path(binary, required=True)
        self.manifest = p["manifest"]
        self.saved_plan = p["plan"]
        self.var_args = []
        for name in sorted(p["vars"] or {}):
            self.var_args += ["--var", "%s=%s" % (name, self._text(p["vars"][name]))]
        self.build_args = ["--build-dir", p["build_dir"]] if p["build_dir"] else []
        self.commands = []
        self.last_stderr = ""
        self.main_stderr = None  # of apply/destroy, once they ran
        self.warned = set()
        self.facts = {}

    @staticmethod
    def _text(value):
        if isinstance(value, bool):
            return "true" if value else "false"
        return "%s" % (value,)

    def run(self, args):
        argv = [self.bin] + args
        self.commands.append(argv)
        rc, out, err = self.module.run_command(argv, check_rc=False)
        self.last_stderr = err
        for line in err.splitlines():
            if line.startswith("warning:") and line not in self.warned:
                self.warned.add(line)
                self.module.warn("bpfplan: " + line[len("warning:"):].strip())
        return rc, out, err

    def fail(self, msg, rc=None, out=None, err=None):
        res = dict(self.facts)
        res.update(msg=msg, commands=self.commands, stderr=err if err is not None else self.last_stderr)
        if rc is not None:
            res["rc"] = rc
        if out is not None:
            res["stdout"] = out
        self.module.fail_json(**res)

    def done(self, changed):
        res = dict(self.facts)
        stderr = self.main_stderr if self.main_stderr is not None else self.last_stderr
        res.update(changed=changed, commands=self.commands, stderr=stderr)
        if self.module._diff and "plan" in res:
            res["diff"] = dict(prepared=res["plan"])
        self.module.exit_json(**res)

    @staticmethod
    def error_text(err, out, fallback):
        """bpfplan's error: its stderr (the failing command, bpftool's
        stderr, the verifier log), else the result event's error."""
        text = (err or "").strip()
        if text:
            return text
        return fallback or (out or "").strip() or "bpfplan failed"

    @staticmethod
    def json_lines(out):
        events = []
        for line in out.splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
        return events

    def status(self):
        """bpfplan status --format json: (rc, parsed or None, stderr)."""
        rc, out, err = self.run(["status", self.manifest] + self.var_args + self.build_args + ["--format", "json"])
        parsed = None
        if rc in (0, 2):
            try:
                parsed = json.loads(out)
            except ValueError:
                parsed = None
        if parsed is not None:
            self.facts["status"] = parsed
        return rc, parsed, err

    def run_events(self, args, what):
        """apply/destroy --format json; fails the task on a non-zero exit."""
        rc, out, err = self.run(args + ["--format", "json"])
        self.main_stderr = err
        events = self.json_lines(out)
        result = None
        for ev in events:
            if ev.get("event") == "result":
                result = ev
        self.facts["result"] = result
        self.facts["notes"] = [ev.get("text", "") for ev in events if ev.get("event") == "note"]
        # Steps that changed something: outcome done, outside the build,
        # the tag probe and a rollback.
        done, run = 0, None
        for ev in events:
            if ev.get("event") == "begin":
                run = ev.get("run")
            elif ev.get("event") == "finished" and ev.get("outcome") == "done" \
                    and run not in ("build", "probe", "rollback"):
                done += 1
        self.facts["steps_done"] = done
        if rc != 0:
            # The event stream can be long (one line per entry): keep its end.
            lines = out.splitlines()
            if len(lines) > 200:
                out = "\n".join(["... (%d earlier lines)" % (len(lines) - 200)] + lines[-200:])
            fallback = result.get("error") if result else None
            if result and result.get("outcome") == "stale":
                self.fail("bpfplan %s: the saved plan is stale, nothing was changed: %s"
                          % (what, self.error_text(err, out, fallback)), rc, out, err)
            self.fail(self.error_text(err, out, fallback), rc, out, err)
        return result, events

    # state=present -------------------------------------------------------

    def present(self):
        rc, out, err = self.run(
            ["plan", self.manifest] + self.var_args + self.build_args + ["--detailed-exitcode", "--format", "json"]
        )
        parsed = None
        if rc in (0, 2):
            try:
                parsed = json.loads(out)
            except ValueError:
                parsed = None
        # Exit codes are Terraform's: 0 no changes, 2 changes, 1 any error
        # (then there is no JSON plan).
        if rc not in (0, 2) or parsed is None or not isinstance(parsed.get("changes"), dict):
            self.fail(self.error_text(err, out, None), rc, out, err)
        changes = parsed["changes"]
        decision = changes.get("decision") or ("nothing" if rc == 0 else "unknown")
        self.facts.update(decision=decision, summary=parsed.get("summary"), drift=parsed.get("drift") or [])
        if changes.get("reason"):
            self.facts["reason"] = changes["reason"]

        trc, tout, terr = self.run(["plan", self.manifest] + self.var_args + self.build_args + ["--detailed-exitcode"])
        self.facts["plan"] = tout if trc in (0, 2) else ""

        if decision == "refused":
            self.fail("bpfplan refuses to apply %s: %s" % (self.manifest, changes.get("reason") or terr.strip()),
                      rc, out, err)
        if rc == 0:
            self.status()
            self.done(False)
        if self.module.check_mode:
            self.status()
            self.done(True)

        result, _ = self.run_events(["apply", self.manifest] + self.var_args + self.build_args, "apply")
        changed = result is None or result.get("outcome") != "no_changes"
        self.status()
        self.done(changed)

    def present_saved(self):
        rc, out, err = self.run(["show", self.saved_plan, "--format", "json"])
        try:
            shown = json.loads(out) if rc == 0 else None
        except ValueError:
            shown = None
        if shown is None:
            self.fail(self.error_text(err, out, None), rc, out, err)
        changes = shown.get("changes") if isinstance(shown.get("changes"), dict) else {}
        decision = changes.get("decision") or "unknown"
        self.facts.update(decision=decision, summary=shown.get("summary"))
        if changes.get("reason"):
            self.facts["reason"] = changes["reason"]
        if shown.get("manifest"):
            self.manifest = shown["manifest"]
        trc, tout, _ = self.run(["show", self.saved_plan])
        self.facts["plan"] = tout if trc == 0 else ""
        if decision == "refused":
            self.fail("the saved plan was refused when it was made: %s" % changes.get("reason"))
        if self.module.check_mode:
            # Whether it is stale shows only when it is applied.
            self.done(decision != "nothing")
        result, _ = self.run_events(["apply", "--plan", self.saved_plan], "apply --plan")
        changed = result is None or result.get("outcome") != "no_changes"
        # status needs the plan's variables and build directory (bpfplan
        # counts another build directory as a changed program).
        self.var_args = self.saved_vars()
        for step in shown.get("steps") or []:
            obj = step.get("object") or {}
            if obj.get("kind") == "build_dir" and obj.get("name"):
                self.build_args = ["--build-dir", obj["name"]]
                break
        if self.var_args is not None:
            self.status()
        self.done(changed)

    def saved_vars(self):
        """The variables a saved plan was made with (format_version 1), for
        the status afterwards; None when the file says otherwise."""
        try:
            with open(self.saved_plan, "rb") as f:
                saved = json.loads(f.read().decode("utf-8"))
            if saved.get("format_version") != 1 or not isinstance(saved.get("vars"), list):
                return None
            args = []
            for name, value in saved["vars"]:
                args += ["--var", "%s=%s" % (name, value)]
            return args
        except (OSError, IOError, ValueError, TypeError):
            return None

    # state=absent --------------------------------------------------------

    def absent(self):
        rc, parsed, err = self.status()
        if parsed is not None:
            states = [((f.get("health") or {}).get("state")) for f in parsed.get("findings", [])]
            exists = parsed.get("recorded") is not None or any(s != "missing" for s in states)
        elif rc == 2:
            # Drift, and only drift (a manifest error exits 1).
            exists = True
        else:
            # status failed (say, a record it cannot read): destroy knows how
            # to deal with that, so let it decide.
            self.module.warn("bpfplan status failed (exit %d), running destroy anyway: %s" % (rc, err.strip()))
            exists = True

        trc, tout, _ = self.run(["plan", self.manifest] + self.var_args + self.build_args + ["--destroy"])
        self.facts["plan"] = tout if trc == 0 else ""
        if not exists:
            self.facts["decision"] = "nothing"
            self.done(False)
        self.facts["decision"] = "destroy"
        if self.module.check_mode:
            self.done(True)
        self.run_events(["destroy", self.manifest] + self.var_args + self.build_args, "destroy")
        changed = self.facts["steps_done"] > 0
        self.status()
        self.done(changed)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            manifest=dict(type="path"),
            vars=dict(type="dict", default={}, aliases=["variables"]),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            plan=dict(type="path"),
            binary=dict(type="str", default="bpfplan"),
            build_dir=dict(type="path"),
        ),
        required_one_of=[["manifest", "plan"]],
        mutually_exclusive=[["manifest", "plan"]],
        supports_check_mode=True,
    )
    p = module.params
    if p["plan"] and p["vars"]:
        module.fail_json(msg="vars does not go with plan: a saved plan holds its variables")
    if p["plan"] and p["state"] != "present":
        module.fail_json(msg="plan is for state=present only; destroy with the manifest")
    if p["plan"] and p["build_dir"]:
        module.fail_json(msg="build_dir does not go with plan: a saved plan names its objects")
    b = Bpfplan(module)
    if p["plan"]:
        b.present_saved()
    elif p["state"] == "present":
        b.present()
    else:
        b.absent()


if __name__ == "__main__":
    main()
