//! Kernel addresses to symbol names, from /proc/kallsyms (the `location` of a drop).
//!
//! The table is 120,000-odd symbols here. The kernel writes /proc/kallsyms slowly: reading it
//! takes 50 ms on an idle machine and over half a second on a busy one, so it is read on a
//! thread of its own from the start of a session ([`Kallsyms::load`]), never on the event
//! loop, where it once held an interval 900 ms past its end. Names live in one string,
//! entries are (address, where the name is): about 5 MiB instead of 9.

use std::{
    cell::{OnceCell, RefCell},
    io::{BufRead as _, BufReader},
    thread::JoinHandle,
};

pub struct Kallsyms {
    table: OnceCell<Table>,
    /// The thread reading /proc/kallsyms, until its table is taken.
    reading: RefCell<Option<JoinHandle<Table>>>,
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
    /// Starts reading /proc/kallsyms on a thread of its own; the first lookup takes its table
    /// (waiting only if it comes within the read's first moments). With kptr_restrict hiding
    /// addresses the table is empty and every lookup falls back to the raw address.
    pub fn load() -> Self {
        let reading = std::thread::Builder::new()
            .name("kallsyms".into())
            .spawn(Self::read)
            .ok();
        Self {
            table: OnceCell::new(),
            reading: RefCell::new(reading),
        }
    }

    pub fn parse(text: &str) -> Self {
        let mut table = Table::default();
        for line in text.lines() {
            table.add(line);
        }
        Self {
            table: OnceCell::from(table.finish()),
            reading: RefCell::new(None),
        }
    }

    fn table(&self) -> &Table {
        self.table.get_or_init(|| {
            match self.reading.borrow_mut().take().map(JoinHandle::join) {
                Some(Ok(table)) => table,
                // No thread could be started, or it panicked: read it here.
                _ => Self::read(),
            }
        })
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
        let table = self.table();
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
        // Read on its own thread: either real names or, under kptr_restrict, raw addresses.
        let syms = Kallsyms::load();
        let name = syms.name(u64::MAX);
        assert!(!name.is_empty());
    }
}
