//! Model → ordered plan, purely: the same model and options always give the
//! same steps. The teardown plan is each step's undo, in reverse.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::model::{AttachPoint, Code, MapDef, MapName, Model, ProgName, Program};
use crate::step::{ReusedMap, Step};

/// Inputs to planning besides the model.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Where compiled objects go (outside the source tree).
    pub build_dir: PathBuf,
    /// Extra `-I` directories for clang.
    pub include: Vec<PathBuf>,
}

impl PlanOptions {
    /// The defaults for this host: objects under `build_dir`, and the
    /// multiarch header directory Debian keeps `asm/types.h` in, which
    /// `clang -target bpf` does not search on its own.
    pub fn for_host(build_dir: PathBuf) -> PlanOptions {
        PlanOptions {
            build_dir,
            include: vec![PathBuf::from(format!(
                "/usr/include/{}-linux-gnu",
                std::env::consts::ARCH
            ))],
        }
    }
}

/// An ordered list of steps for one manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The manifest the plan came from.
    pub manifest: PathBuf,
    pub steps: Vec<Step>,
}

impl Plan {
    /// The teardown: the undo of every step, last step first.
    pub fn destroy(&self) -> Plan {
        Plan {
            manifest: self.manifest.clone(),
            steps: self.steps.iter().rev().filter_map(Step::undo).collect(),
        }
    }
}

/// Plan a checked model.
pub fn plan(model: &Model, opts: &PlanOptions) -> Plan {
    let mut steps = Vec::new();

    let objects: Vec<PathBuf> = model
        .programs
        .iter()
        .map(|p| match &p.code {
            Code::Source(_) => opts.build_dir.join(format!("{}.o", p.name)),
            Code::Object(o) => o.clone(),
        })
        .collect();

    if model
        .programs
        .iter()
        .any(|p| matches!(p.code, Code::Source(_)))
    {
        steps.push(Step::MakeBuildDir {
            dir: opts.build_dir.clone(),
        });
    }
    for (p, object) in model.programs.iter().zip(&objects) {
        if let Code::Source(source) = &p.code {
            steps.push(Step::Compile {
                program: p.name.clone(),
                source: source.clone(),
                object: object.clone(),
                include: opts.include.clone(),
            });
        }
    }

    // Load in dependency order: a program that reuses a map loads after the
    // program that creates it, and after that map is pinned.
    let programs: BTreeMap<&ProgName, &Program> =
        model.programs.iter().map(|p| (&p.name, p)).collect();
    let maps: BTreeMap<&MapName, &MapDef> = model.maps.iter().map(|m| (&m.name, m)).collect();
    let mut owned: BTreeMap<&ProgName, Vec<&MapDef>> = BTreeMap::new();
    for m in &model.maps {
        owned.entry(&m.owner).or_default().push(m);
    }
    for i in load_order(model) {
        let p = &model.programs[i];
        steps.push(load_step(&maps, p, &objects[i]));
        for m in owned.get(&p.name).into_iter().flatten() {
            steps.push(Step::PinMap {
                map: m.name.clone(),
                program_pin: p.pin.clone(),
                pin: m.pin.clone(),
                managed: m.entries.is_some(),
                labels: m.labels.clone(),
            });
            // Declared contents go in before anything attaches, so a policy
            // holds from the first packet.
            for e in m.entries.iter().flatten() {
                steps.push(Step::UpdateMapEntry {
                    map: m.name.clone(),
                    pin: m.pin.clone(),
                    entry: e.clone(),
                });
            }
        }
    }

    // Map attachments, then the attachments that make traffic reach the
    // programs (cgroups, interfaces): see `Step::note`.
    for a in &model.attachments {
        let Some(p) = programs.get(&a.program) else {
            continue;
        };
        if let AttachPoint::Map { map, kind } = &a.point
            && let Some(m) = maps.get(map)
        {
            steps.push(Step::AttachMap {
                program: p.name.clone(),
                program_pin: p.pin.clone(),
                map: map.clone(),
                map_pin: m.pin.clone(),
                kind: kind.to_string(),
            });
        }
    }
    for a in &model.attachments {
        let Some(p) = programs.get(&a.program) else {
            continue;
        };
        match &a.point {
            AttachPoint::Map { .. } => {}
            AttachPoint::Cgroup { path, kind } => steps.push(Step::AttachCgroup {
                program: p.name.clone(),
                program_pin: p.pin.clone(),
                cgroup: path.clone(),
                kind: kind.to_string(),
            }),
            AttachPoint::Xdp { iface, mode } => steps.push(Step::AttachXdp {
                program: p.name.clone(),
                program_pin: p.pin.clone(),
                iface: iface.clone(),
                mode: *mode,
            }),
        }
    }

    Plan {
        manifest: model.manifest.clone(),
        steps,
    }
}

fn load_step(maps: &BTreeMap<&MapName, &MapDef>, p: &Program, object: &Path) -> Step {
    Step::LoadProgram {
        program: p.name.clone(),
        object: object.to_path_buf(),
        prog_type: p.prog_type.name.to_string(),
        pin: p.pin.clone(),
        reuse: p
            .reuse
            .iter()
            .filter_map(|name| maps.get(name))
            .map(|m| ReusedMap {
                name: m.name.clone(),
                pin: m.pin.clone(),
            })
            .collect(),
    }
}

/// Indices of programs in load order: manifest order, except that a program
/// is preceded by the creators of the maps it reuses. Validation rules out
/// cycles; the `visiting` set keeps a cycle from recursing forever anyway.
fn load_order(model: &Model) -> Vec<usize> {
    let index: BTreeMap<&str, usize> = model
        .programs
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.as_str(), i))
        .collect();
    let owner: BTreeMap<&str, usize> = model
        .maps
        .iter()
        .filter_map(|m| Some((m.name.as_str(), *index.get(m.owner.as_str())?)))
        .collect();
    let deps: Vec<Vec<usize>> = model
        .programs
        .iter()
        .map(|p| {
            p.reuse
                .iter()
                .filter_map(|m| owner.get(m.as_str()).copied())
                .collect()
        })
        .collect();
    let mut state = vec![0u8; model.programs.len()]; // 0 new, 1 visiting, 2 done
    let mut order = Vec::with_capacity(model.programs.len());
    for i in 0..model.programs.len() {
        visit(i, &deps, &mut state, &mut order);
    }
    order
}

fn visit(i: usize, deps: &[Vec<usize>], state: &mut [u8], order: &mut Vec<usize>) {
    if state[i] != 0 {
        return;
    }
    state[i] = 1;
    for &d in &deps[i] {
        visit(d, deps, state, order);
    }
    state[i] = 2;
    order.push(i);
}
