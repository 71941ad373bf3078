//! Snapshots of the text, sh and json plans, and of the destroy plan, of
//! every manifest in `manifests/`.

use bpfplan::plan::render::{Direction, Format, render};

use crate::common;

#[test]
fn every_manifest_plans_and_snapshots() {
    let manifests = common::manifests();
    assert!(
        manifests.len() >= 3,
        "expected at least 3 manifests, found {manifests:?}"
    );
    for path in manifests {
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        let plan = common::plan_file(&path, &[]).unwrap_or_else(|e| panic!("{e}"));
        let destroy = plan.destroy();
        common::settings().bind(|| {
            for (format, ext) in [
                (Format::Text, "text"),
                (Format::Sh, "sh"),
                (Format::Json, "json"),
            ] {
                let apply = render(&plan, format, Direction::Apply).unwrap();
                insta::assert_snapshot!(format!("plan-{stem}-{ext}"), apply);
            }
            let text = render(&destroy, Format::Text, Direction::Destroy).unwrap();
            insta::assert_snapshot!(format!("destroy-{stem}-text"), text);
            let sh = render(&destroy, Format::Sh, Direction::Destroy).unwrap();
            insta::assert_snapshot!(format!("destroy-{stem}-sh"), sh);
        });
    }
}

#[test]
fn planning_is_deterministic() {
    for path in common::manifests() {
        let a = common::plan_file(&path, &[]).unwrap();
        let b = common::plan_file(&path, &[]).unwrap();
        assert_eq!(a, b);
    }
}

#[test]
fn bypass_order_is_the_classic_sequence_with_cgroup_attach_last() {
    let plan = common::plan_file("manifests/bypass.toml".as_ref(), &[]).unwrap();
    let ops: Vec<String> = common::steps(&plan)
        .iter()
        .map(|s| {
            serde_json::to_value(s).unwrap()["op"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        ops,
        [
            "make_build_dir",
            "compile",
            "compile",
            "load_program",
            "pin_map",
            "pin_map",
            "pin_map",
            "pin_map",
            "pin_map",
            "pin_map",
            "update_map_entry",
            "load_program",
            "pin_map",
            "update_map_entry",
            "update_map_entry",
            "attach",
            "attach"
        ]
    );
    // The map attachment, then the cgroup one.
    let points: Vec<String> = common::steps(&plan)[15..]
        .iter()
        .map(|s| {
            serde_json::to_value(s).unwrap()["point"]
                .as_object()
                .unwrap()
                .keys()
                .next()
                .unwrap()
                .clone()
        })
        .collect();
    assert_eq!(points, ["map", "cgroup"]);
    let last = bpfplan::plan::render::display_argv(&common::steps(&plan)[16].argv()).unwrap();
    assert_eq!(
        last,
        "bpftool cgroup attach /sys/fs/cgroup sock_ops pinned /sys/fs/bpf/bpf_sockops multi"
    );
}

#[test]
fn destroy_is_the_reverse_of_the_undos() {
    let plan = common::plan_file("manifests/bypass.toml".as_ref(), &[]).unwrap();
    let destroy = plan.destroy();
    // First the switch the programs read (`on_destroy`), then the undos.
    let (switch, rest) = destroy.outline().split_at(1);
    assert_eq!(switch[0].summary(), "set `bypass_ctl`[0] = 1");
    let expected: Vec<_> = common::steps(&plan)
        .iter()
        .rev()
        .filter_map(|s| s.undo())
        .collect();
    assert_eq!(rest, expected);
    assert_eq!(rest.len(), 11);
    assert!(rest.iter().all(|s| s.undo().is_none()));
}

#[test]
fn a_program_reusing_a_map_loads_after_its_creator_whatever_the_file_order() {
    let text = r#"
[[program]]
name = "user"
object = "../bpf/redir.c"
type = "sk_msg"
pin = "/sys/fs/bpf/user"
maps = ["m"]

[[program]]
name = "maker"
object = "../bpf/sockops.c"
type = "sockops"
pin = "/sys/fs/bpf/maker"

[[map]]
name = "m"
program = "maker"
pin = "/sys/fs/bpf/m"
"#;
    let plan = common::plan_text("manifests/x.toml".as_ref(), text, &[]).unwrap();
    let summaries: Vec<String> = common::steps(&plan).iter().map(|s| s.summary()).collect();
    assert_eq!(
        summaries,
        [
            "load sockops program `maker` and pin it at /sys/fs/bpf/maker",
            "pin map `m`, created by the program at /sys/fs/bpf/maker, at /sys/fs/bpf/m",
            "load sk_msg program `user` and pin it at /sys/fs/bpf/user",
        ]
    );
}

/// A chain of 4,000 programs, each reusing the map of the one before it,
/// written last to first: validation and load ordering neither recurse
/// (no stack overflow) nor revisit (linear).
#[test]
fn a_long_chain_of_map_reuse_plans_in_order() {
    const N: usize = 4000;
    let mut text = String::new();
    for i in (0..N).rev() {
        text.push_str(&format!(
            "[[program]]\nname = \"p{i}\"\nobject = \"../bpf/redir.c\"\ntype = \"sk_msg\"\npin = \"/sys/fs/bpf/chain/p{i}\"\n"
        ));
        if i > 0 {
            text.push_str(&format!("maps = [\"m{}\"]\n", i - 1));
        }
        text.push_str(&format!(
            "[[map]]\nname = \"m{i}\"\nprogram = \"p{i}\"\npin = \"/sys/fs/bpf/chain/m{i}\"\n"
        ));
    }
    let plan = common::plan_text("manifests/chain.toml".as_ref(), &text, &[]).unwrap();
    let loads: Vec<String> = common::steps(&plan)
        .iter()
        .filter_map(|s| match s {
            bpfplan::plan::step::Step::LoadProgram { program, .. } => Some(program.0.clone()),
            _ => None,
        })
        .collect();
    let want: Vec<String> = (0..N).map(|i| format!("p{i}")).collect();
    assert_eq!(loads, want);

    // Close the chain into a cycle: reported, not recursed into.
    let cyclic = text.replacen(
        "pin = \"/sys/fs/bpf/chain/p0\"\n",
        &format!("pin = \"/sys/fs/bpf/chain/p0\"\nmaps = [\"m{}\"]\n", N - 1),
        1,
    );
    let err = common::plan_text("manifests/chain.toml".as_ref(), &cyclic, &[]).unwrap_err();
    assert!(
        err.contains("programs reuse each other's maps in a cycle"),
        "{}",
        &err[..err.len().min(400)]
    );
}
