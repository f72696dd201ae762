//! What vxprobe reads from the running kernel's BTF (/sys/kernel/btf/vmlinux): struct field
//! offsets for the kernel programs, and the names of drop reasons. Nothing here is copied from
//! one kernel's headers, so one binary serves every kernel with BTF.

use std::{collections::HashMap, path::Path};

use btf_rs::{Backend, Btf, Type};
use fallible_iterator::FallibleIterator as _;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum KernelBtfError {
    #[error(
        "cannot read the kernel's BTF at {path}: {source} (a kernel built with CONFIG_DEBUG_INFO_BTF is needed)"
    )]
    Unreadable { path: String, source: btf_rs::Error },
    #[error("kernel BTF has no {0}")]
    MissingType(String),
    #[error("kernel BTF: struct {structure} has no field {field}")]
    MissingField { structure: String, field: String },
    #[error("kernel BTF: {0}")]
    Btf(#[from] btf_rs::Error),
}

pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn load() -> Result<Self, KernelBtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    /// Maps the file and reads only the types asked for where the kernel lets sysfs BTF be
    /// mapped (Linux 6.16+); parses all of it into memory elsewhere. Parsing all of vmlinux's
    /// BTF costs ~25 MiB and most of vxprobe's start-up CPU; we need a dozen structs and one
    /// enum.
    pub fn from_file(path: &Path) -> Result<Self, KernelBtfError> {
        let btf = Btf::from_file_with_backend(path, Backend::Mmap)
            .or_else(|_| Btf::from_file(path))
            .map_err(|source| KernelBtfError::Unreadable {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Self { btf })
    }

    fn named_struct(&self, name: &str) -> Result<btf_rs::Struct, KernelBtfError> {
        self.btf
            .resolve_types_by_name(name)
            .map_err(|_| KernelBtfError::MissingType(format!("struct {name}")))?
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or_else(|| KernelBtfError::MissingType(format!("struct {name}")))
    }

    /// Skips typedefs and qualifiers to the struct or union underneath, if any.
    fn as_aggregate(&self, mut ty: Type) -> Option<btf_rs::Struct> {
        for _ in 0..16 {
            match ty {
                Type::Struct(s) | Type::Union(s) => return Some(s),
                Type::Typedef(_) | Type::Const(_) | Type::Volatile(_) | Type::Restrict(_) => {
                    ty = self.btf.resolve_chained_type(ty.as_btf_type()?).ok()?;
                }
                _ => return None,
            }
        }
        None
    }

    /// Bit offset of `field` in `aggregate`, looking through anonymous structs and unions.
    fn find_member(&self, aggregate: &btf_rs::Struct, field: &str) -> Option<(u32, Type)> {
        for member in &aggregate.members {
            let name = self.btf.resolve_name(member).unwrap_or_default();
            let ty = self.btf.resolve_chained_type(member).ok()?;
            if name == field {
                return Some((member.bit_offset(), ty));
            }
            if name.is_empty()
                && let Some(inner) = self.as_aggregate(ty)
                && let Some((offset, ty)) = self.find_member(&inner, field)
            {
                return Some((member.bit_offset() + offset, ty));
            }
        }
        None
    }

    /// Bit offset of a field (a bitfield such as `sk_buff`'s `csum_valid`) in `struct name`.
    pub fn bit_offset_of(&self, structure: &str, field: &str) -> Result<u32, KernelBtfError> {
        let current = self.named_struct(structure)?;
        self.find_member(&current, field)
            .map(|(bits, _)| bits)
            .ok_or_else(|| KernelBtfError::MissingField {
                structure: structure.to_owned(),
                field: field.to_owned(),
            })
    }

    /// Byte offset of a field path (`["nd_net", "net"]`) from the start of `struct name`.
    pub fn offset_of(&self, structure: &str, path: &[&str]) -> Result<u32, KernelBtfError> {
        let missing = |field: &str| KernelBtfError::MissingField {
            structure: structure.to_owned(),
            field: field.to_owned(),
        };
        let mut current = self.named_struct(structure)?;
        let mut total = 0;
        for (i, field) in path.iter().enumerate() {
            let (offset, ty) = self
                .find_member(&current, field)
                .ok_or_else(|| missing(field))?;
            total += offset / 8;
            if i + 1 < path.len() {
                current = self.as_aggregate(ty).ok_or_else(|| missing(field))?;
            }
        }
        Ok(total)
    }

    /// Every (name, value) of the enums whose name ends in `drop_reason`: the core
    /// `skb_drop_reason` and the subsystems' enums (OVS, mac80211...) whose values carry their
    /// subsystem id in the top 16 bits.
    pub fn drop_reasons(&self) -> Result<DropReasons, KernelBtfError> {
        let mut names = HashMap::new();
        let mut types = self.btf.type_iter();
        while let Some(ty) = types.next()? {
            let Type::Enum(e) = ty else { continue };
            let enum_name = self.btf.resolve_name(&e).unwrap_or_default();
            if !enum_name.ends_with("drop_reason") {
                continue;
            }
            for member in &e.members {
                let name = self.btf.resolve_name(member)?;
                names.entry(member.val()).or_insert(name);
            }
        }
        if !names.values().any(|n| n.starts_with("SKB_DROP_REASON_")) {
            return Err(KernelBtfError::MissingType("enum skb_drop_reason".into()));
        }
        Ok(DropReasons {
            names,
            reasonless: false,
        })
    }

    /// `struct packet_sock` lives in af_packet, built in or a module with its own split BTF.
    pub fn packet_sock_ifindex(&self) -> Result<u32, KernelBtfError> {
        if let Ok(offset) = self.offset_of("packet_sock", &["ifindex"]) {
            return Ok(offset);
        }
        let module = Path::new("/sys/kernel/btf/af_packet");
        let split = Btf::from_split_file(module, &self.btf).map_err(|source| {
            KernelBtfError::Unreadable {
                path: module.display().to_string(),
                source,
            }
        })?;
        KernelBtf { btf: split }.offset_of("packet_sock", &["ifindex"])
    }

    /// Number of arguments of a tracepoint (without the leading context pointer), from its
    /// `btf_trace_<name>` typedef.
    pub fn tracepoint_arity(&self, name: &str) -> Result<usize, KernelBtfError> {
        let typedef = format!("btf_trace_{name}");
        let mut ty = self
            .btf
            .resolve_types_by_name(&typedef)
            .ok()
            .and_then(|t| t.into_iter().next())
            .ok_or_else(|| KernelBtfError::MissingType(typedef.clone()))?;
        for _ in 0..4 {
            match ty {
                Type::FuncProto(proto) => return Ok(proto.parameters.len().saturating_sub(1)),
                Type::Typedef(_) | Type::Ptr(_) => {
                    ty = self.btf.resolve_chained_type(
                        ty.as_btf_type().expect("typedef and ptr are BTF types"),
                    )?;
                }
                _ => break,
            }
        }
        Err(KernelBtfError::MissingType(format!("{typedef} prototype")))
    }
}

/// Drop reason names of the running kernel, by value.
#[derive(Debug, Clone, Default)]
pub struct DropReasons {
    names: HashMap<u32, String>,
    /// The kernel has no `enum skb_drop_reason` (before 5.17): every name here is vxprobe's.
    pub reasonless: bool,
}

impl DropReasons {
    /// The names vxprobe gives the frees of a kernel without drop reasons.
    pub fn reasonless() -> Self {
        use vxprobe_common::event::{
            REASONLESS_CSUM, REASONLESS_NOT_SPECIFIED, REASONLESS_TOO_BIG,
        };
        let names = [
            (REASONLESS_NOT_SPECIFIED, "SKB_DROP_REASON_NOT_SPECIFIED"),
            (REASONLESS_CSUM, "CSUM"),
            (REASONLESS_TOO_BIG, "SKB_DROP_REASON_PKT_TOO_BIG"),
        ];
        Self {
            names: names.into_iter().map(|(v, n)| (v, n.to_owned())).collect(),
            reasonless: true,
        }
    }

    /// The contract's name: without `SKB_DROP_REASON_`; unknown values by number.
    pub fn name(&self, value: u32) -> String {
        match self.names.get(&value) {
            Some(name) => name
                .strip_prefix("SKB_DROP_REASON_")
                .unwrap_or(name)
                .to_owned(),
            None => format!("UNKNOWN_{value}"),
        }
    }

    pub fn value_of(&self, full_name: &str) -> Option<u32> {
        self.names
            .iter()
            .find_map(|(v, n)| (n == full_name).then_some(*v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// These read the BTF of the kernel the tests run on: the point is that they are not
    /// baked in.
    fn kernel() -> Option<KernelBtf> {
        let btf = KernelBtf::load().ok();
        if btf.is_none() {
            eprintln!("skipped: no readable {VMLINUX_BTF}");
        }
        btf
    }

    #[test]
    fn tracepoint_arity_is_read_from_btf() {
        let Some(btf) = kernel() else { return };
        assert_eq!(
            btf.tracepoint_arity("kfree_skb").ok().map(|n| n >= 3),
            Some(true)
        );
        assert!(btf.tracepoint_arity("no_such_tracepoint").is_err());
    }

    #[test]
    fn drop_reason_names_come_from_btf() {
        let Some(btf) = kernel() else { return };
        let reasons = btf.drop_reasons().unwrap();
        let udp_csum = reasons.value_of("SKB_DROP_REASON_UDP_CSUM").unwrap();
        assert_eq!(reasons.name(udp_csum), "UDP_CSUM");
        assert_eq!(
            reasons.name(reasons.value_of("SKB_DROP_REASON_NOT_SPECIFIED").unwrap()),
            "NOT_SPECIFIED"
        );
        assert_eq!(reasons.name(0xdead_beef), "UNKNOWN_3735928559");
    }
}
