//! Kernel addresses to symbol names, from /proc/kallsyms (the `location` of a drop).

use std::fs;

pub struct Kallsyms {
    /// Text symbols sorted by address.
    symbols: Vec<(u64, String)>,
}

impl Kallsyms {
    /// Reads /proc/kallsyms; with kptr_restrict hiding addresses it is empty and every lookup
    /// falls back to the raw address.
    pub fn load() -> Self {
        let text = fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Self {
        let mut symbols: Vec<(u64, String)> = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                let addr = u64::from_str_radix(parts.next()?, 16).ok()?;
                let kind = parts.next()?;
                let name = parts.next()?;
                (addr != 0 && matches!(kind, "t" | "T")).then(|| (addr, name.to_owned()))
            })
            .collect();
        symbols.sort_unstable();
        Self { symbols }
    }

    /// The function containing `addr`; the raw address when no symbol covers it.
    pub fn name(&self, addr: u64) -> String {
        let idx = self.symbols.partition_point(|(a, _)| *a <= addr);
        match idx.checked_sub(1).and_then(|i| self.symbols.get(i)) {
            Some((_, name)) => name.clone(),
            None => format!("0x{addr:x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_resolve_to_the_enclosing_function() {
        let syms = Kallsyms::parse(
            "ffffffff81000000 T _stext\nffffffff81001000 t ip_rcv_core\nffffffff81002000 T ip_rcv\nffffffff81003000 d some_data\n",
        );
        assert_eq!(syms.name(0xffffffff81001abc), "ip_rcv_core");
        assert_eq!(syms.name(0xffffffff81002000), "ip_rcv");
        assert_eq!(syms.name(0x10), "0x10");
    }
}
