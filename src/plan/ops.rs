//! A run's ops as records keep them. An op that writes or removes one map
//! entry, undone on the same key, is one short string in a group of its
//! map (`set KEY:VALUE -`, `set KEY:VALUE set:OLD`, `set KEY:VALUE del`,
//! `del KEY:VALUE set:VALUE`), so the record of a run of a million entries is a
//! million short strings, not a million objects that each name the map
//! and its pin. Every other op is stored whole, in its place.

use serde::de::{SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Op;
use super::step::Step;
use crate::manifest::model::{Entry, MapName, MapPin, ScalarType};

/// A run of entry ops on one map, as read.
#[derive(Deserialize)]
struct Group {
    map: MapName,
    pin: MapPin,
    #[serde(default)]
    key_type: Option<ScalarType>,
    #[serde(default)]
    value_type: Option<ScalarType>,
    ops: Vec<String>,
}

/// One element of the stored list, as read: a group, or an op whole.
#[derive(Deserialize)]
struct Element {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    entries: Option<Group>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    step: Option<Step>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    undo: Option<Box<Step>>,
}

/// How a map's entries are shown (key type, value type).
type Shown = (Option<ScalarType>, Option<ScalarType>);

/// The group an entry op packs into (its map, pin, and how its entries are
/// shown), when it packs: its undo, if any, is on its own key.
fn group_of(op: &Op) -> Option<(&MapName, &MapPin, Shown)> {
    let (map, pin, entry) = match &op.step {
        Step::UpdateMapEntry { map, pin, entry } | Step::DeleteMapEntry { map, pin, entry } => {
            (map, pin, entry)
        }
        _ => return None,
    };
    let packs = match op.undo.as_deref() {
        None => true,
        Some(Step::UpdateMapEntry {
            map: m,
            pin: p,
            entry: e,
        }) => m == map && p == pin && e.key() == entry.key() && e.shown() == entry.shown(),
        Some(Step::DeleteMapEntry {
            map: m,
            pin: p,
            entry: e,
        }) => m == map && p == pin && e == entry && e.shown() == entry.shown(),
        Some(_) => false,
    };
    packs.then(|| (map, pin, entry.shown()))
}

/// The packed string of an op that `group_of` packs, appended to `out`.
fn pack_into(op: &Op, out: &mut String) {
    use crate::util::push_hex;
    let (verb, entry) = match &op.step {
        Step::UpdateMapEntry { entry, .. } => ("set ", entry),
        Step::DeleteMapEntry { entry, .. } => ("del ", entry),
        _ => return,
    };
    out.push_str(verb);
    push_hex(out, entry.key());
    out.push(':');
    push_hex(out, entry.value());
    match op.undo.as_deref() {
        None => out.push_str(" -"),
        Some(Step::UpdateMapEntry { entry: e, .. }) => {
            out.push_str(" set:");
            push_hex(out, e.value());
        }
        Some(_) => out.push_str(" del"),
    }
}

/// A group as written: its ops packed one at a time into one buffer.
#[derive(Serialize)]
struct GroupOut<'a> {
    map: &'a MapName,
    pin: &'a MapPin,
    key_type: Option<ScalarType>,
    value_type: Option<ScalarType>,
    ops: Packed<'a>,
}

struct Packed<'a>(&'a [Op]);

impl Serialize for Packed<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        let mut text = String::new();
        for op in self.0 {
            text.clear();
            pack_into(op, &mut text);
            seq.serialize_element(text.as_str())?;
        }
        seq.end()
    }
}

/// An element as written (the fields of `Element`, borrowed).
#[derive(Serialize)]
struct ElementOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    entries: Option<GroupOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<&'a Step>,
    #[serde(skip_serializing_if = "Option::is_none")]
    undo: Option<&'a Step>,
}

pub fn serialize<S: Serializer>(ops: &[Op], s: S) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(None)?;
    let mut i = 0;
    while i < ops.len() {
        let Some(group) = group_of(&ops[i]) else {
            seq.serialize_element(&ElementOut {
                entries: None,
                step: Some(&ops[i].step),
                undo: ops[i].undo.as_deref(),
            })?;
            i += 1;
            continue;
        };
        let len = ops[i..]
            .iter()
            .take_while(|op| group_of(op) == Some(group))
            .count();
        let (map, pin, (key_type, value_type)) = group;
        seq.serialize_element(&ElementOut {
            entries: Some(GroupOut {
                map,
                pin,
                key_type,
                value_type,
                ops: Packed(&ops[i..i + len]),
            }),
            step: None,
            undo: None,
        })?;
        i += len;
    }
    seq.end()
}

/// The ops of one packed string.
fn unpack(g: &Group, text: &str) -> Option<Op> {
    let mut words = text.split(' ');
    let (verb, kv, undo) = (words.next()?, words.next()?, words.next()?);
    let (k, v) = kv.split_once(':')?;
    let shown = (g.key_type, g.value_type);
    let (key, value) = (crate::util::unhex(k)?, crate::util::unhex(v)?);
    let entry = Entry::new(&key, &value, shown);
    let update = |entry| Step::UpdateMapEntry {
        map: g.map.clone(),
        pin: g.pin.clone(),
        entry,
    };
    let delete = |entry| Step::DeleteMapEntry {
        map: g.map.clone(),
        pin: g.pin.clone(),
        entry,
    };
    let undo = match undo {
        "-" => None::<Step>,
        "del" => Some(delete(entry.clone())),
        old => Some(update(Entry::new(
            &key,
            &crate::util::unhex(old.strip_prefix("set:")?)?,
            shown,
        ))),
    };
    let step = match verb {
        "set" => update(entry),
        "del" => delete(entry),
        _ => return None,
    };
    Some(Op {
        step,
        undo: undo.map(Box::new),
    })
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Op>, D::Error> {
    struct List;
    impl<'de> Visitor<'de> for List {
        type Value = Vec<Op>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a run's ops")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Op>, A::Error> {
            let mut ops = Vec::new();
            while let Some(e) = seq.next_element::<Element>()? {
                match (e.entries, e.step) {
                    (Some(g), None) => {
                        ops.reserve(g.ops.len());
                        for text in &g.ops {
                            ops.push(unpack(&g, text).ok_or_else(|| {
                                serde::de::Error::custom(format!("`{text}` is not an entry op"))
                            })?);
                        }
                    }
                    (None, Some(step)) => ops.push(Op { step, undo: e.undo }),
                    _ => {
                        return Err(serde::de::Error::custom(
                            "an op is a step or a group of entries",
                        ));
                    }
                }
            }
            Ok(ops)
        }
    }
    d.deserialize_seq(List)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::model::ScalarType::{U8, U32};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Held(#[serde(with = "super")] Vec<Op>);

    /// What records of the earlier form hold is read as it was meant: a
    /// run's ops as objects, a map's entries as a list of objects.
    #[test]
    fn records_of_the_earlier_form_are_read() {
        let ops: Held = serde_json::from_str(
            r#"[{"step": {"op": "update_map_entry", "map": "deny", "pin": "/sys/fs/bpf/t/deny",
                 "entry": {"key": "e8030000", "value": "01", "key_text": "1000", "value_text": "1"}},
                 "undo": null}]"#,
        )
        .unwrap();
        assert_eq!(ops.0.len(), 1);
        assert_eq!(ops.0[0].step.summary(), "set `deny`[0xe8030000] = 0x01");
        #[derive(Deserialize)]
        struct Map {
            #[serde(with = "crate::manifest::model::entry_list")]
            entries: Option<Vec<Entry>>,
        }
        let old: Map = serde_json::from_str(
            r#"{"entries": [{"key": "e8030000", "value": "01", "key_text": "1000", "value_text": "1"}]}"#,
        )
        .unwrap();
        let new: Map = serde_json::from_str(
            r#"{"entries": {"key_type": "u32", "value_type": "u8", "hex": ["e8030000:01"]}}"#,
        )
        .unwrap();
        assert_eq!(old.entries, new.entries, "the same bytes");
        assert_eq!(new.entries.unwrap()[0].key_text(), "1000");
        let none: Map = serde_json::from_str(r#"{"entries": null}"#).unwrap();
        assert!(none.entries.is_none());
    }

    /// A map's entries are packed as `KEY:VALUE` hex, short ones made on
    /// the stack and long ones (beyond 47 bytes in all) on the heap: both
    /// read back as the same bytes.
    #[test]
    fn packed_entries_of_every_length_come_back_the_same() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Map {
            #[serde(with = "crate::manifest::model::entry_list")]
            entries: Option<Vec<Entry>>,
        }
        let entries: Vec<Entry> = [(4, 1), (16, 16), (40, 7), (40, 8), (64, 64), (0, 3)]
            .into_iter()
            .enumerate()
            .map(|(i, (k, v))| {
                let key: Vec<u8> = (0..k).map(|j| (i * 31 + j) as u8).collect();
                let value: Vec<u8> = (0..v).map(|j| (j * 7 + i) as u8).collect();
                Entry::new(&key, &value, (None, None))
            })
            .collect();
        let map = Map {
            entries: Some(entries),
        };
        let text = serde_json::to_string(&map).unwrap();
        assert!(text.contains(r#""hex":["00010203:00""#), "{text}");
        // 40 + 7 bytes fill the stack buffer but for one byte (95
        // characters); 40 + 8 and 64 + 64 are made on the heap.
        for e in map.entries.as_ref().unwrap() {
            let packed = format!(
                "\"{}:{}\"",
                crate::util::hex(e.key()),
                crate::util::hex(e.value())
            );
            assert!(text.contains(&packed), "{packed} not in {text}");
        }
        let back: Map = serde_json::from_str(&text).unwrap();
        assert_eq!(back, map);
    }

    #[test]
    fn entry_ops_pack_into_strings_and_come_back_the_same() {
        let (map, pin) = (MapName::new("deny"), MapPin::new("/sys/fs/bpf/t/deny"));
        let shown = (Some(U32), Some(U8));
        let e = |k: u32, v: u8| Entry::new(&k.to_ne_bytes(), &[v], shown);
        let set = |entry| Step::UpdateMapEntry {
            map: map.clone(),
            pin: pin.clone(),
            entry,
        };
        let del = |entry| Step::DeleteMapEntry {
            map: map.clone(),
            pin: pin.clone(),
            entry,
        };
        let other = Step::UnpinMap {
            map: map.clone(),
            pin: pin.clone(),
        };
        let ops = vec![
            Op {
                step: set(e(1, 1)),
                undo: None,
            },
            Op {
                step: set(e(2, 2)),
                undo: Some(Box::new(set(e(2, 1)))),
            },
            Op {
                step: set(e(3, 1)),
                undo: Some(Box::new(del(e(3, 1)))),
            },
            Op {
                step: del(e(4, 1)),
                undo: Some(Box::new(set(e(4, 1)))),
            },
            Op {
                step: other.clone(),
                undo: None,
            },
            // An undo on another key is kept whole.
            Op {
                step: set(e(5, 1)),
                undo: Some(Box::new(set(e(6, 1)))),
            },
            Op {
                step: set(Entry::new(&[7], &[1], (None, None))),
                undo: None,
            },
        ];
        let json = serde_json::to_string(&Held(ops.clone())).unwrap();
        assert!(json.contains(r#""ops":["set 01000000:01 -","set 02000000:02 set:01","set 03000000:01 del","del 04000000:01 set:01"]"#), "{json}");
        let back: Held = serde_json::from_str(&json).unwrap();
        assert_eq!(back.0, ops);
        assert_eq!(
            back.0.iter().map(|o| o.step.summary()).collect::<Vec<_>>(),
            ops.iter().map(|o| o.step.summary()).collect::<Vec<_>>(),
            "shown as before"
        );
    }
}
