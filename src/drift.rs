//! Compares the live kernel with a plan and with what apply recorded: the
//! findings `bpfplan status` reports, and the smallest change apply must make
//! (nothing, map contents only, or the whole deployment).

use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::inspect;
use crate::model::Entry;
use crate::plan::Plan;
use crate::state::{self, State, Status};
use crate::step::Step;

/// How one object of the manifest stands in the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "detail", rename_all = "snake_case")]
pub enum Health {
    Present,
    Missing,
    Different(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// program, map, entries or attachment.
    pub kind: &'static str,
    /// The object, as the manifest names it.
    pub name: String,
    /// Where it lives (a pin, a cgroup, an interface).
    pub place: String,
    pub health: Health,
}

/// What apply must do to bring the kernel in line with a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    None,
    /// Only map contents differ: these steps fix them, reloading nothing.
    Entries(Vec<Step>),
    /// The deployment must be replaced, for this reason.
    Full(String),
}

/// The plan without what can change without a reload: map entries, and the
/// labels `status` shows counters under.
fn base(plan: &Plan) -> Vec<Step> {
    plan.steps
        .iter()
        .filter(|s| !matches!(s, Step::UpdateMapEntry { .. } | Step::DeleteMapEntry { .. }))
        .map(|s| match s {
            Step::PinMap {
                map,
                program_pin,
                pin,
                managed,
                ..
            } => Step::PinMap {
                map: map.clone(),
                program_pin: program_pin.clone(),
                pin: pin.clone(),
                managed: *managed,
                labels: Vec::new(),
            },
            s => s.clone(),
        })
        .collect()
}

/// The changes apply must make, given the record of the last apply and the
/// hashes of the objects the plan would load now.
pub fn changes(plan: &Plan, old: &State, objects: &[(PathBuf, String)]) -> Result<Changes> {
    if old.status == Status::Applying {
        return Ok(Changes::Full("an earlier apply was interrupted".into()));
    }
    if base(&old.plan) != base(plan) {
        return Ok(Changes::Full("the manifest changed".into()));
    }
    if old.objects != objects {
        return Ok(Changes::Full("a program changed".into()));
    }
    if let Some(f) = objects_findings(plan, Some(old))?
        .into_iter()
        .find(|f| f.health != Health::Present)
    {
        return Ok(Changes::Full(format!(
            "drift: {} `{}` at {} is {}",
            f.kind,
            f.name,
            f.place,
            describe(&f.health)
        )));
    }
    let steps = entry_changes(plan, Some(old))?;
    Ok(if steps.is_empty() {
        Changes::None
    } else {
        Changes::Entries(steps)
    })
}

pub fn describe(h: &Health) -> String {
    match h {
        Health::Present => "present".into(),
        Health::Missing => "missing".into(),
        Health::Different(why) => format!("different ({why})"),
    }
}

/// Programs, map pins and attachments of the plan, as the kernel has them.
pub fn objects_findings(plan: &Plan, st: Option<&State>) -> Result<Vec<Finding>> {
    let recorded = |pin: &str| st.and_then(|s| s.programs.iter().find(|p| p.pin == pin));
    let mut prog_ids: BTreeMap<String, u32> = BTreeMap::new();
    let mut out = Vec::new();
    for step in &plan.steps {
        match step {
            Step::LoadProgram { program, pin, .. } => {
                let health = match inspect::pinned_prog(pin.as_str())? {
                    None => Health::Missing,
                    Some(info) => {
                        prog_ids.insert(pin.0.clone(), info.id);
                        match recorded(pin.as_str()) {
                            Some(r) if r.tag != info.tag => Health::Different(format!(
                                "tag {} where apply loaded {}",
                                info.tag, r.tag
                            )),
                            Some(r) if r.id != info.id => Health::Different(format!(
                                "program id {} where apply loaded {}",
                                info.id, r.id
                            )),
                            _ => Health::Present,
                        }
                    }
                };
                out.push(Finding {
                    kind: "program",
                    name: program.0.clone(),
                    place: pin.0.clone(),
                    health,
                });
            }
            Step::PinMap { map, pin, .. } => out.push(Finding {
                kind: "map",
                name: map.0.clone(),
                place: pin.0.clone(),
                health: if inspect::pinned_map_id(pin.as_str())?.is_some() {
                    Health::Present
                } else {
                    Health::Missing
                },
            }),
            Step::AttachCgroup {
                program,
                program_pin,
                cgroup,
                kind,
            } => {
                let id = prog_ids.get(program_pin.as_str());
                let attached = inspect::cgroup_attachments(cgroup.as_str())?;
                out.push(Finding {
                    kind: "attachment",
                    name: format!("{program} ({kind})"),
                    place: cgroup.0.clone(),
                    health: present(id.is_some_and(|id| attached.iter().any(|a| a.id == *id))),
                });
            }
            Step::AttachMap {
                program,
                program_pin,
                map,
                map_pin,
                kind,
            } => {
                let id = prog_ids.get(program_pin.as_str());
                let attached = if std::path::Path::new(map_pin.as_str()).exists() {
                    inspect::map_attached_prog_ids(map_pin.as_str(), kind)?
                } else {
                    Vec::new()
                };
                out.push(Finding {
                    kind: "attachment",
                    name: format!("{program} ({kind})"),
                    place: format!("map {map}"),
                    health: present(id.is_some_and(|id| attached.contains(id))),
                });
            }
            Step::AttachXdp {
                program,
                program_pin,
                iface,
                ..
            } => {
                let id = prog_ids.get(program_pin.as_str()).copied();
                let on_iface = inspect::xdp_prog_ids(iface.as_str())?;
                out.push(Finding {
                    kind: "attachment",
                    name: format!("{program} (xdp)"),
                    place: format!("interface {iface}"),
                    health: present(id.is_some_and(|id| on_iface.contains(&id))),
                });
            }
            _ => {}
        }
    }
    Ok(out)
}

fn present(yes: bool) -> Health {
    if yes {
        Health::Present
    } else {
        Health::Missing
    }
}

/// Steps that make every managed map hold exactly its declared entries.
pub fn entry_changes(plan: &Plan, old: Option<&State>) -> Result<Vec<Step>> {
    let mut steps = Vec::new();
    for step in &plan.steps {
        let Step::PinMap {
            map,
            pin,
            managed: true,
            ..
        } = step
        else {
            continue;
        };
        if !std::path::Path::new(pin.as_str()).exists() {
            continue;
        }
        let declared: Vec<&Entry> = plan
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::UpdateMapEntry { pin: p, entry, .. } if p == pin => Some(entry),
                _ => None,
            })
            .collect();
        // Every slot of an array always exists: an undeclared one is left as
        // it is, never deleted (the kernel refuses that).
        let is_array = matches!(
            inspect::map_type(pin.as_str())?.as_str(),
            "array" | "percpu_array"
        );
        // Per-CPU maps are compared on the first CPU, the one `bpftool map
        // update` writes a single value for.
        let live: BTreeMap<Vec<u8>, Vec<u8>> = inspect::map_dump(pin.as_str())?
            .into_iter()
            .map(|e| (e.key, e.values.into_iter().next().unwrap_or_default()))
            .collect();
        for e in &declared {
            if live.get(&e.key) != Some(&e.value) {
                steps.push(Step::UpdateMapEntry {
                    map: map.clone(),
                    pin: pin.clone(),
                    entry: (*e).clone(),
                });
            }
        }
        for (key, value) in &live {
            if is_array || declared.iter().any(|e| &e.key == key) {
                continue;
            }
            // Name the key as the manifest did when it was declared.
            let known = old.and_then(|o| {
                o.plan.steps.iter().find_map(|s| match s {
                    Step::UpdateMapEntry { pin: p, entry, .. } if p == pin && &entry.key == key => {
                        Some(entry.key_text.clone())
                    }
                    _ => None,
                })
            });
            steps.push(Step::DeleteMapEntry {
                map: map.clone(),
                pin: pin.clone(),
                entry: Entry {
                    key: key.clone(),
                    value: value.clone(),
                    key_text: known.unwrap_or_else(|| format!("0x{}", state::hex(key))),
                    value_text: format!("0x{}", state::hex(value)),
                },
            });
        }
    }
    Ok(steps)
}

/// Live figures worth a glance: sockhash sizes and counter arrays.
#[derive(Debug, Clone, Serialize)]
pub struct Gauge {
    pub map: String,
    /// `entries` for a sockmap or sockhash; a counter's label otherwise.
    pub name: String,
    pub value: u64,
}

pub fn gauges(plan: &Plan) -> Result<Vec<Gauge>> {
    let mut out = Vec::new();
    for step in &plan.steps {
        let Step::PinMap {
            map, pin, labels, ..
        } = step
        else {
            continue;
        };
        if !std::path::Path::new(pin.as_str()).exists() {
            continue;
        }
        match inspect::map_type(pin.as_str())?.as_str() {
            "sockhash" | "sockmap" => out.push(Gauge {
                map: map.0.clone(),
                name: "entries".into(),
                value: inspect::map_dump(pin.as_str())?.len() as u64,
            }),
            "percpu_array" | "array" if !labels.is_empty() => {
                for e in inspect::map_dump(pin.as_str())? {
                    let mut idx = [0u8; 4];
                    let n = e.key.len().min(4);
                    idx[..n].copy_from_slice(&e.key[..n]);
                    let idx = u32::from_ne_bytes(idx) as usize;
                    let sum = e
                        .values
                        .iter()
                        .map(|v| {
                            let mut b = [0u8; 8];
                            let n = v.len().min(8);
                            b[..n].copy_from_slice(&v[..n]);
                            u64::from_ne_bytes(b)
                        })
                        .fold(0u64, u64::wrapping_add);
                    out.push(Gauge {
                        map: map.0.clone(),
                        name: labels.get(idx).cloned().unwrap_or_else(|| idx.to_string()),
                        value: sum,
                    });
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// What `bpfplan status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub manifest: PathBuf,
    /// Whether the kernel matches the manifest.
    pub in_sync: bool,
    /// What apply recorded: `applied`, `applying` (interrupted) or none.
    pub recorded: Option<Status>,
    pub findings: Vec<Finding>,
    pub gauges: Vec<Gauge>,
}

/// Compare the live kernel with the manifest's plan, object by object.
pub fn status(plan: &Plan) -> Result<StatusReport> {
    let st = state::Store::for_plan(plan)?.load()?;
    let mut findings = objects_findings(plan, st.as_ref())?;
    if let Some(st) = &st {
        // A manifest changed since apply (another program type, attach
        // point, reused map...) is not what the kernel holds.
        if base(&st.plan) != base(plan) {
            findings.push(Finding {
                kind: "manifest",
                name: plan.manifest.display().to_string(),
                place: "the plan".into(),
                health: Health::Different("changed since apply".into()),
            });
        }
        // Nor is a program whose source, headers or object changed.
        let now = state::source_hashes(plan)?;
        for (path, hash) in &now {
            if st.sources.iter().any(|(p, h)| p == path && h == hash) {
                continue;
            }
            let program = plan.steps.iter().find_map(|s| match s {
                Step::Compile {
                    program, source, ..
                } if source == path => Some(program),
                Step::LoadProgram {
                    program, object, ..
                } if object == path => Some(program),
                _ => None,
            });
            if let Some(program) = program
                && let Some(f) = findings.iter_mut().find(|f| {
                    f.kind == "program" && f.name == program.0 && f.health == Health::Present
                })
            {
                f.health = Health::Different(format!(
                    "{} (or a file it includes) changed since apply",
                    path.display()
                ));
            }
        }
    }
    let entry_steps = entry_changes(plan, st.as_ref())?;
    for step in &plan.steps {
        if let Step::PinMap {
            map,
            pin,
            managed: true,
            ..
        } = step
        {
            let differ = entry_steps
                .iter()
                .filter(|s| matches!(s, Step::UpdateMapEntry { pin: p, .. } | Step::DeleteMapEntry { pin: p, .. } if p == pin))
                .count();
            let health = if !std::path::Path::new(pin.as_str()).exists() {
                Health::Missing
            } else if differ == 0 {
                Health::Present
            } else {
                Health::Different(if differ == 1 {
                    "1 entry differs from the manifest".to_string()
                } else {
                    format!("{differ} entries differ from the manifest")
                })
            };
            findings.push(Finding {
                kind: "entries",
                name: map.0.clone(),
                place: pin.0.clone(),
                health,
            });
        }
    }
    let recorded = st.as_ref().map(|s| s.status);
    let in_sync =
        findings.iter().all(|f| f.health == Health::Present) && recorded != Some(Status::Applying);
    Ok(StatusReport {
        manifest: plan.manifest.clone(),
        in_sync,
        recorded,
        findings,
        gauges: gauges(plan)?,
    })
}

/// The status report for people.
pub fn status_text(r: &StatusReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let verdict = if r.in_sync { "in sync" } else { "DRIFT" };
    let recorded = match r.recorded {
        Some(Status::Applied) => "applied by bpfplan",
        Some(Status::Applying) => "an apply was interrupted",
        None => "no record of an apply",
    };
    let _ = writeln!(out, "{}: {verdict} ({recorded})", r.manifest.display());
    for f in &r.findings {
        let _ = writeln!(
            out,
            "  {:<10} {:<28} {:<44} {}",
            f.kind,
            f.name,
            f.place,
            describe(&f.health)
        );
    }
    if !r.gauges.is_empty() {
        let _ = writeln!(out);
        for g in &r.gauges {
            let _ = writeln!(out, "  {:<16} {:<22} {}", g.map, g.name, g.value);
        }
    }
    out
}
