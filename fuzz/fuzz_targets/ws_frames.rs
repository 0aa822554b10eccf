//! Client WebSocket bytes, as the gateway's reader decodes them: frames of
//! any shape, fragmented, compressed (permessage-deflate) or not. Whatever
//! the input, decoding ends in messages or an error, never a panic, never
//! more than the message limit in memory, and every byte is accounted for.
#![no_main]

use herald_gateway::transport::inbound::Decoder;
use libfuzzer_sys::fuzz_target;

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    // The first byte picks whether compression was negotiated.
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let mut decoder = Decoder::new(MAX, flags & 1 == 1);
    let mut at = 0;
    while at < input.len() {
        match decoder.decode(&input[at..]) {
            Ok((Some(message), used)) => {
                assert!(used > 0 && at + used <= input.len());
                assert!(message.len() <= MAX, "a message over the limit");
                at += used;
            }
            Ok((None, used)) => {
                assert!(at + used <= input.len());
                // Incomplete: the rest waits for more input.
                break;
            }
            Err(_) => break,
        }
    }
});
