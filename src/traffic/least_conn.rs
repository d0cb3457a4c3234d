//! The least-connection picker: order candidates by in-flight requests
//! relative to weight, available ones first, ties broken by rotation.

/// One candidate as the picker sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    pub in_flight: u64,
    pub weight: u32,
    /// Healthy, breaker not open, bulkhead not full.
    pub available: bool,
}

/// Indices of `loads` in the order to try them. `rotation` (a counter that
/// advances per request) decides among equals, so ties spread evenly.
pub fn order(loads: &[Load], rotation: usize) -> Vec<usize> {
    let n = loads.len();
    let mut idx: Vec<usize> = (0..n).collect();
    if n == 0 {
        return idx;
    }
    let start = rotation % n;
    idx.sort_by(|&a, &b| {
        let (la, lb) = (&loads[a], &loads[b]);
        let score = |l: &Load| (l.in_flight as f64 + 1.0) / l.weight.max(1) as f64;
        lb.available
            .cmp(&la.available)
            .then(score(la).total_cmp(&score(lb)))
            .then(((a + n - start) % n).cmp(&((b + n - start) % n)))
    });
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(in_flight: u64, weight: u32, available: bool) -> Load {
        Load {
            in_flight,
            weight,
            available,
        }
    }

    #[test]
    fn fewest_in_flight_first() {
        assert_eq!(order(&[l(5, 1, true), l(1, 1, true), l(3, 1, true)], 0), vec![1, 2, 0]);
    }

    #[test]
    fn weight_scales() {
        // 4 in flight at weight 4 is lighter than 2 at weight 1.
        assert_eq!(order(&[l(2, 1, true), l(4, 4, true)], 0), vec![1, 0]);
    }

    #[test]
    fn unavailable_last() {
        assert_eq!(order(&[l(0, 1, false), l(9, 1, true)], 0), vec![1, 0]);
    }

    #[test]
    fn ties_rotate() {
        let loads = [l(0, 1, true), l(0, 1, true), l(0, 1, true)];
        let firsts: Vec<usize> = (0..6).map(|r| order(&loads, r)[0]).collect();
        assert_eq!(firsts, vec![0, 1, 2, 0, 1, 2]);
    }
}
