//! fleetctl's tables: Go's `tabwriter` with fleet's settings (minwidth 0, tabwidth 8,
//! padding 1, padchar TAB): every cell but the last of a row is followed by enough TABs to
//! reach its column's width — the widest cell plus one, rounded up to a multiple of 8.

/// Renders rows (the first is usually the header) as fleetctl prints them.
pub fn render(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(row.len().saturating_sub(1)) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let widths: Vec<usize> = widths.iter().map(|w| (w + 1).div_ceil(8) * 8).collect();
    let mut out = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < row.len() {
                let w = cell.chars().count();
                let tabs = (widths[i] - w).div_ceil(8).max(1);
                out.push_str(&"\t".repeat(tabs));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(r: &[&[&str]]) -> Vec<Vec<String>> {
        r.iter()
            .map(|x| x.iter().map(|s| s.to_string()).collect())
            .collect()
    }

    #[test]
    fn fleet_byte_layout() {
        let t = render(&rows(&[
            &["UNIT", "HASH", "DSTATE", "STATE", "TARGET"],
            &[
                "goodbye.service",
                "d4c61bf",
                "launched",
                "launched",
                "85c0c595.../172.17.8.102",
            ],
        ]));
        assert_eq!(
            t,
            "UNIT\t\tHASH\tDSTATE\t\tSTATE\t\tTARGET\ngoodbye.service\td4c61bf\tlaunched\tlaunched\t85c0c595.../172.17.8.102\n"
        );
    }

    #[test]
    fn reference_examples() {
        let t = render(&rows(&[
            &["MACHINE", "IP", "METADATA"],
            &["113f16a7...", "172.17.8.103", "az=us-west-1b"],
            &["85c0c595...", "172.17.8.102", "-"],
        ]));
        assert_eq!(
            t,
            "MACHINE\t\tIP\t\tMETADATA\n113f16a7...\t172.17.8.103\taz=us-west-1b\n85c0c595...\t172.17.8.102\t-\n"
        );
        let t = render(&rows(&[
            &["UNIT", "MACHINE", "ACTIVE", "SUB"],
            &[
                "global.service",
                "113f16a7.../172.17.8.103",
                "active",
                "running",
            ],
            &[
                "hello.service",
                "113f16a7.../172.17.8.103",
                "active",
                "running",
            ],
        ]));
        assert_eq!(
            t,
            "UNIT\t\tMACHINE\t\t\t\tACTIVE\tSUB\nglobal.service\t113f16a7.../172.17.8.103\tactive\trunning\nhello.service\t113f16a7.../172.17.8.103\tactive\trunning\n"
        );
    }
}
