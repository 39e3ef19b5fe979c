#![no_main]
//! TSO splitting of arbitrary super-packets with arbitrary virtio headers.
use isthmus_dataplane::io::offload::{finish_checksum, TsoLayout, VnetHdr, VNET_HDR_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < VNET_HDR_LEN {
        return;
    }
    let Some(h) = VnetHdr::decode(data) else { return };
    let mut pkt = data[VNET_HDR_LEN..].to_vec();
    if let Ok(l) = TsoLayout::parse(&pkt, &h) {
        let mut out = vec![0u8; l.max_segment_len()];
        for i in 0..l.segments().min(64) {
            let n = l.segment(&pkt, i, &mut out);
            assert!(n <= out.len());
        }
    }
    let _ = finish_checksum(&mut pkt, &h);
});
