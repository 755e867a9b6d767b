//! The terminal layer: raw mode and the alternate screen (restored on exit
//! and on a panic), a thread reading keys, and the draw loop. The loop
//! only moves [`Input`]s into the model, draws it, and hands the model's
//! requests to the worker with `try_send`: it never waits on the network.

use std::time::Duration;

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use tokio::sync::mpsc;

use crate::model::{Input, Key, Model};
use crate::worker::now_ms;

/// How often the clock ticks (countdowns, typing expiry).
const TICK: Duration = Duration::from_millis(500);
/// Inputs applied at most between two draws.
const MAX_BATCH: usize = 512;

/// Runs the UI until the user quits. `inputs` carries what the worker
/// reports; `requests` takes what the model asks for.
pub async fn run(
    mut model: Model,
    mut inputs: mpsc::Receiver<Input>,
    requests: mpsc::Sender<crate::model::Request>,
) -> std::io::Result<()> {
    let mut terminal = ratatui::try_init()?;
    let (keys_tx, mut keys) = mpsc::channel::<Key>(256);
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || read_keys(&keys_tx, &stop_rx));
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        if let Err(e) = terminal.draw(|frame| crate::view::draw(frame, &model)) {
            break Err(e);
        }
        tokio::select! {
            key = keys.recv() => match key {
                Some(key) => model.handle(Input::Key(key)),
                None => break Ok(()),
            },
            input = inputs.recv() => match input {
                Some(input) => model.handle(input),
                None => break Ok(()),
            },
            _ = tick.tick() => model.handle(Input::Tick(now_ms())),
        }
        // Whatever else is waiting, before the next draw.
        for _ in 0..MAX_BATCH {
            match inputs.try_recv() {
                Ok(input) => model.handle(input),
                Err(_) => break,
            }
        }
        for request in model.take_requests() {
            if requests.try_send(request).is_err() {
                model.handle(Input::Failed {
                    what: "busy".into(),
                    error: "too many requests in flight; try again".into(),
                });
            }
        }
        if model.quit {
            break Ok(());
        }
    };
    let _ = stop_tx.send(());
    ratatui::restore();
    let _ = reader.join();
    result
}

/// Reads terminal events on a thread of its own (crossterm's reads block),
/// until told to stop or the UI is gone.
fn read_keys(keys: &mpsc::Sender<Key>, stop: &std::sync::mpsc::Receiver<()>) {
    loop {
        if stop.try_recv().is_ok() {
            return;
        }
        match event::poll(Duration::from_millis(100)) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(_) => return,
        }
        let Ok(Event::Key(key)) = event::read() else {
            continue;
        };
        for key in translate(key) {
            if keys.blocking_send(key).is_err() {
                return;
            }
        }
    }
}

/// A crossterm key as the model's [`Key`]s. Alt and a character is what a
/// terminal sends for Esc quickly followed by that character (Esc starts
/// both), so it is taken as those two keys: Esc then `/quit` quits.
pub fn translate(key: KeyEvent) -> Vec<Key> {
    if key.kind == KeyEventKind::Release {
        return Vec::new();
    }
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    let alt = key.modifiers.contains(KeyModifiers::ALT);
    let one = match key.code {
        KeyCode::Char(c) if ctrl => Key::Ctrl(c.to_ascii_lowercase()),
        KeyCode::Char(c) if alt => return vec![Key::Esc, Key::Char(c)],
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Enter => Key::Enter,
        KeyCode::Backspace => Key::Backspace,
        KeyCode::Delete => Key::Delete,
        KeyCode::Left => Key::Left,
        KeyCode::Right => Key::Right,
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Tab => Key::Tab,
        KeyCode::BackTab => Key::BackTab,
        KeyCode::Esc => Key::Esc,
        _ => return Vec::new(),
    };
    vec![one]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alt_and_a_character_is_esc_then_the_character() {
        let key = |code, modifiers| translate(KeyEvent::new(code, modifiers));
        assert_eq!(
            key(KeyCode::Char('/'), KeyModifiers::ALT),
            vec![Key::Esc, Key::Char('/')]
        );
        assert_eq!(
            key(KeyCode::Char('N'), KeyModifiers::CONTROL),
            vec![Key::Ctrl('n')]
        );
        assert_eq!(key(KeyCode::F(5), KeyModifiers::NONE), Vec::<Key>::new());
    }
}
