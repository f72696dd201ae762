//! Kernel addresses to symbol names, from /proc/kallsyms (the `location` of a drop).
//!
//! The table is read when the first address is looked up, not at start: it is 120,000-odd
//! symbols here, tens of milliseconds to read, and only drop events need it. Names live in one
//! string, entries are (address, where the name is): about 5 MiB instead of 9.

use std::{
    cell::OnceCell,
    io::{BufRead as _, BufReader},
};

pub struct Kallsyms {
    table: OnceCell<Table>,
}

#[derive(Default)]
struct Table {
    /// Text symbols sorted by address: (address, start of the name in `names`, its length).
    symbols: Vec<(u64, u32, u16)>,
    names: String,
}

impl Table {
    fn add(&mut self, line: &str) {
        let mut parts = line.split_whitespace();
        let (Some(addr), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let Ok(addr) = u64::from_str_radix(addr, 16) else {
            return;
        };
        let (Ok(start), Ok(len)) = (u32::try_from(self.names.len()), u16::try_from(name.len()))
        else {
            return;
        };
        if addr != 0 && matches!(kind, "t" | "T") {
            self.names.push_str(name);
            self.symbols.push((addr, start, len));
        }
    }

    fn finish(mut self) -> Self {
        self.symbols.sort_unstable_by_key(|&(addr, _, _)| addr);
        self.symbols.shrink_to_fit();
        self.names.shrink_to_fit();
        self
    }
}

impl Kallsyms {
    /// Reads /proc/kallsyms on first use; with kptr_restrict hiding addresses it is empty and
    /// every lookup falls back to the raw address.
    pub fn load() -> Self {
        Self {
            table: OnceCell::new(),
        }
    }

    pub fn parse(text: &str) -> Self {
        let mut table = Table::default();
        for line in text.lines() {
            table.add(line);
        }
        Self {
            table: OnceCell::from(table.finish()),
        }
    }

    fn read() -> Table {
        let mut table = Table::default();
        let Ok(file) = std::fs::File::open("/proc/kallsyms") else {
            return table;
        };
        let mut reader = BufReader::with_capacity(64 << 10, file);
        let mut line = String::new();
        while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
            table.add(&line);
            line.clear();
        }
        table.finish()
    }

    /// The function containing `addr`; the raw address when no symbol covers it.
    pub fn name(&self, addr: u64) -> String {
        let table = self.table.get_or_init(Self::read);
        let idx = table.symbols.partition_point(|&(a, _, _)| a <= addr);
        match idx.checked_sub(1).and_then(|i| table.symbols.get(i)) {
            Some(&(_, start, len)) => {
                let start = start as usize;
                table.names[start..start + usize::from(len)].to_owned()
            }
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

    #[test]
    fn the_running_kernel_has_symbols_or_none() {
        // Lazily read: either real names or, under kptr_restrict, raw addresses.
        let syms = Kallsyms::load();
        let name = syms.name(u64::MAX);
        assert!(!name.is_empty());
    }
}
