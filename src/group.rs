//! Group commit, shared by metering's `Ingestor` and the Stripe inbox's `Writer`: writer
//! tasks share one queue, and each takes the first job that comes, then every job already
//! waiting until their weight reaches a budget, and writes them together (one statement, one
//! commit). Under load groups grow; when idle a job is written alone, at once.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, Mutex};

/// Starts `writers` tasks draining a queue of `capacity` jobs in groups: a group is one job,
/// plus those already waiting while the group's total `weight` is under `budget`. The tasks
/// stop when the last sender is dropped.
pub fn spawn_writers<J, W, F, Fut>(
    capacity: usize,
    writers: usize,
    budget: usize,
    weight: W,
    write: F,
) -> mpsc::Sender<J>
where
    J: Send + 'static,
    W: Fn(&J) -> usize + Clone + Send + Sync + 'static,
    F: Fn(Vec<J>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let (tx, rx) = mpsc::channel::<J>(capacity);
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..writers {
        let rx = rx.clone();
        let weight = weight.clone();
        let write = write.clone();
        tokio::spawn(async move {
            while let Some(group) = next_group(&rx, budget, &weight).await {
                write(group).await;
            }
        });
    }
    tx
}

/// Waits for a job, then takes those already waiting while the weight is under `budget`.
/// `None` once every sender is gone.
async fn next_group<J>(
    rx: &Mutex<mpsc::Receiver<J>>,
    budget: usize,
    weight: impl Fn(&J) -> usize,
) -> Option<Vec<J>> {
    let mut rx = rx.lock().await;
    let first = rx.recv().await?;
    let mut total = weight(&first);
    let mut group = vec![first];
    while total < budget {
        match rx.try_recv() {
            Ok(job) => {
                total += weight(&job);
                group.push(job);
            }
            Err(_) => break,
        }
    }
    Some(group)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_group_takes_what_waits_up_to_the_budget() {
        let (tx, rx) = mpsc::channel::<usize>(16);
        for w in [2, 2, 2, 5, 1] {
            tx.send(w).await.unwrap();
        }
        let rx = Mutex::new(rx);
        // 2 + 2 = 4 < 5, so a third job joins: 6 reaches the budget.
        assert_eq!(next_group(&rx, 5, |w| *w).await, Some(vec![2, 2, 2]));
        // A job over the budget alone is still taken.
        assert_eq!(next_group(&rx, 5, |w| *w).await, Some(vec![5]));
        assert_eq!(next_group(&rx, 5, |w| *w).await, Some(vec![1]));
        drop(tx);
        assert_eq!(next_group(&rx, 5, |w| *w).await, None);
    }
}
