# test_gsink.tcl - the SWIG Tcl module: forward, backward and metrics on the
# "micro" preset, checked against references computed here from raw tensors,
# and errors raised as Tcl errors with the library's message.
# Usage: tclsh test_gsink.tcl path/to/gsink.so
load [file normalize [lindex $argv 0]] Gsink

set failures 0
proc check {name cond {detail ""}} {
    if {![uplevel 1 [list expr $cond]]} {
        puts "FAIL: $name $detail"
        incr ::failures
    } else {
        puts "ok: $name"
    }
}
proc close_to {a b rel} {
    set m [expr {max(abs($a), abs($b), 1e-6)}]
    return [expr {abs($a - $b) <= $rel * $m}]
}
proc l2 {values} {
    set s 0.0
    foreach v $values { set s [expr {$s + $v * $v}] }
    return [expr {sqrt($s)}]
}

check "version" {[gsink_version_number] == $GSINK_VERSION_NUMBER}

# ---- model -----------------------------------------------------------------
set cfg [new_gsink_config]
gsink_config_init $cfg
gsink_config_preset micro $cfg
set V [gsink_config_vocab_size_get $cfg]
set L [gsink_config_n_layers_get $cfg]
set H [gsink_config_n_heads_get $cfg]
set opts [new_gsink_model_options]
gsink_model_options_init $opts
gsink_model_options_seed_set $opts 1234
gsink_model_options_n_threads_set $opts 1
set m [gsink_model_create $cfg $opts]

set B 2
set T 64
set tokens {}
set targets {}
for {set b 0} {$b < $B} {incr b} {
    for {set t 0} {$t < $T} {incr t} {
        lappend tokens [expr {(31 * $b + 7 * $t + 3) % $V}]
        lappend targets [expr {$t + 1 < $T ? (31 * $b + 7 * ($t + 1) + 3) % $V : -1}]
    }
}

# ---- forward: loss equals the cross-entropy of the logits -----------------
set loss [gsink_forward $m $tokens $targets $B $T]
check "last shape" {[gsink_last_shape $m] eq [list $B $T]}
set logits [gsink_get_logits $m [expr {$B * $T * $V}]]
set sum 0.0
set n 0
for {set i 0} {$i < $B * $T} {incr i} {
    set tg [lindex $targets $i]
    if {$tg < 0} continue
    set row [lrange $logits [expr {$i * $V}] [expr {($i + 1) * $V - 1}]]
    set mx [tcl::mathfunc::max {*}$row]
    set se 0.0
    foreach x $row { set se [expr {$se + exp($x - $mx)}] }
    set sum [expr {$sum + $mx + log($se) - [lindex $row $tg]}]
    incr n
}
set ref_loss [expr {$sum / $n}]
check "loss = cross-entropy of logits" {[close_to $loss $ref_loss 1e-5]} "$loss vs $ref_loss"
check "loss near ln(vocab)" {abs($loss - log($V)) < 0.1} $loss

# ---- backward: gradient norms and R_GS from the raw gradient --------------
gsink_backward $m 0
lassign [gsink_site_dims $m $GSINK_SITE_ATTN_NORM_OUT] sh sw
set W [expr {$sh * $sw}]
set g [gsink_get_gradient $m 0 $GSINK_SITE_ATTN_NORM_OUT [expr {$B * $T * $W}]]
set ref_norms {}
for {set t 0} {$t < $T} {incr t} {
    set summed {}
    for {set j 0} {$j < $W} {incr j} {
        set s 0.0
        for {set b 0} {$b < $B} {incr b} { set s [expr {$s + [lindex $g [expr {(($b * $T) + $t) * $W + $j}]]}] }
        lappend summed $s
    }
    lappend ref_norms [l2 $summed]
}
set norms [gsink_get_gradient_norms $m 0 $GSINK_SITE_ATTN_NORM_OUT $GSINK_ALL_HEADS $GSINK_AGG_SUM_THEN_NORM $T]
set ok 1
for {set t 0} {$t < $T} {incr t} {
    if {![close_to [lindex $norms $t] [lindex $ref_norms $t] 1e-4]} { set ok 0 }
}
check "gradient norms (sum then norm)" {$ok}
set te 31
set den 0.0
for {set t 1} {$t <= $te} {incr t} { set den [expr {$den + [lindex $ref_norms $t]}] }
set ref_rgs [expr {[lindex $ref_norms 0] / ($den / $te)}]
set rgs [gsink_gradient_sink_ratio $m 0 0 $te $GSINK_AGG_SUM_THEN_NORM]
check "R_GS" {[close_to $rgs $ref_rgs 1e-4]} "$rgs vs $ref_rgs"

# ---- attention metric: sink scores and rate from the attention pattern ----
set diag [new_gsink_diag_options]
gsink_diag_options_init $diag
gsink_get_diag_options $m $diag
set win [gsink_diag_options_sink_window_get $diag]
set scores [gsink_sink_scores $m 0 0 $H]
set above 0
set ok 1
for {set h 0} {$h < $H} {incr h} {
    set alpha 0.0
    for {set b 0} {$b < $B} {incr b} {
        set a [gsink_attention_pattern $m 0 $b $h [expr {$T * $T}]]
        for {set t 0} {$t < $win} {incr t} { set alpha [expr {$alpha + [lindex $a [expr {$t * $T}]] / double($win)}] }
    }
    set alpha [expr {$alpha / $B}]
    if {![close_to [lindex $scores $h] $alpha 1e-4]} { set ok 0 }
    if {$alpha > 0.3} { incr above }
}
check "sink scores" {$ok}
set rate [gsink_sink_rate $m 0 0 0.3]
check "sink rate" {$rate == double($above) / $H} "$rate"

# t0/early from activation norms.
set an [gsink_get_activation_norms $m [expr {$L - 1}] $GSINK_SITE_RESID_OUT $GSINK_ALL_HEADS $T]
set early 0.0
for {set t 1} {$t <= 15} {incr t} { set early [expr {$early + [lindex $an $t] / 15.0}] }
set t0 [gsink_massive_activation_ratio $m [expr {$L - 1}] $GSINK_SITE_RESID_OUT]
check "t0/early" {[close_to $t0 [expr {[lindex $an 0] / $early}] 1e-4]}

# Several outputs come back as a list of lists.
lassign [gsink_branch_ratios $m 0 $GSINK_BRANCH_ATTN $GSINK_AGG_SUM_THEN_NORM $T] bloat change compress
check "branch ratios" {[llength $bloat] == $T && [llength $compress] == $T}

set json [gsink_report_json $m NULL]
check "report json" {[string match "*gsink.report/1*" $json]}

# ---- streaming analysis: 1 + 1 sequences equal the batch of 2 --------------
set gsum [gsink_get_gradient_norms $m 0 $GSINK_SITE_ATTN_NORM_OUT -1 $GSINK_AGG_SUM_THEN_NORM $T]
set a [gsink_analysis_begin $m $T NULL]
gsink_analysis_add $a [lrange $tokens 0 [expr {$T - 1}]] [lrange $targets 0 [expr {$T - 1}]] 1 $T
set half [gsink_analysis_get_state $a]
gsink_analysis_add $a [lrange $tokens $T end] {} 1 $T
set code [catch {gsink_analysis_add $a [lrange $tokens 0 9] {} 1 10} msg opt]
check "analysis wrong seq_len" {$code == 1 && [lindex [dict get $opt -errorcode] 1] == $GSINK_ERR_SHAPE_MISMATCH} "$msg"
set sg [gsink_analysis_gradient_norms $a 0 $GSINK_SITE_ATTN_NORM_OUT -1 $GSINK_AGG_SUM_THEN_NORM]
set ok [expr {[llength $sg] == $T}]
for {set t 0} {$t < $T} {incr t} {
    if {![close_to [lindex $sg $t] [lindex $gsum $t] 1e-5]} { set ok 0 }
}
check "analysis gradient norms equal the batch" {$ok}
check "analysis counts" {[gsink_analysis_counts $a] eq [list 2 2 [expr {2 * ($T - 1)}]]}
set n [gsink_analysis_state_size $a]
set full [gsink_analysis_get_state $a]
check "analysis state size" {[llength $full] == $n && [llength $half] == $n}
check "analysis memory" {[lindex [gsink_analysis_memory $a] 0] >= 8 * $n}
set ajson [gsink_analysis_report_json $a NULL]
check "analysis report" {[string match "*\"micro_batches\": 2*" $ajson]}
set b [gsink_analysis_begin $m $T NULL]
gsink_analysis_set_state $b $full
check "analysis state round trip" {[gsink_analysis_report_json $b NULL] eq $ajson}
gsink_analysis_finish $a
set code [catch {gsink_analysis_add $a [lrange $tokens 0 [expr {$T - 1}]] {} 1 $T} msg opt]
check "analysis add after finish" {$code == 1 && [lindex [dict get $opt -errorcode] 1] == $GSINK_ERR_CALL_ORDER} "$msg"
gsink_analysis_free $a
gsink_analysis_free $b
set ::progress_calls 0
proc stop_after_first {done total} { incr ::progress_calls; return [expr {$done >= 1}] }
set code [catch {gsink_analyze_sequences $m $tokens $B $T 1 NULL stop_after_first} msg opt]
check "analyze_sequences cancelled" {$code == 1 && [lindex [dict get $opt -errorcode] 1] == $GSINK_ERR_CANCELLED && $::progress_calls == 1} "$msg"
set sjson [gsink_analyze_sequences $m $tokens $B $T 1 NULL ""]
check "analyze_sequences" {[string match "*\"sequences\": 2, \"micro_batches\": 2*" $sjson]}
# the model holds the last micro-batch: run the batch of 2 again for what follows
gsink_forward $m $tokens $targets $B $T
gsink_backward $m 0

# Parameters: names, round trip.
set np [gsink_param_count $m]
lassign [gsink_param_info $m 0] name ndim dims
check "param info" {$np > 0 && $name ne "" && $ndim >= 1}
set w [gsink_get_param $m model.norm.weight [gsink_config_d_model_get $cfg]]
gsink_set_param $m model.norm.weight $w
check "param round trip" {[gsink_get_param $m model.norm.weight [llength $w]] eq $w}

# Memory: bytes and peak of the backend's buffers; the reset peak starts from the bytes.
lassign [gsink_model_memory $m $GSINK_MEMORY_RESET_PEAK] bytes peak
check "memory" {$bytes >= 8 * [gsink_param_numel $m] && $peak >= $bytes} "$bytes $peak"
check "memory peak reset" {[gsink_model_memory $m 0] eq [list $bytes $bytes]}

# ---- errors ----------------------------------------------------------------
set code [catch {gsink_config_preset no-such-preset $cfg} msg opt]
check "unknown preset raises" {$code == 1 && [lindex [dict get $opt -errorcode] 1] == $GSINK_ERR_UNKNOWN_NAME} "$msg"
check "error message from the library" {[string length $msg] > 0}
set bad [lreplace $tokens 5 5 $V]
set code [catch {gsink_forward $m $bad $targets $B $T} msg opt]
check "token out of range raises" {$code == 1 && [lindex [dict get $opt -errorcode] 1] == $GSINK_ERR_TOKEN_OUT_OF_RANGE} "$msg"
set code [catch {gsink_forward $m [lrange $tokens 0 10] $targets $B $T} msg opt]
check "short token list raises" {$code == 1 && [lindex [dict get $opt -errorcode] 1] == $GSINK_ERR_SHAPE_MISMATCH} "$msg"
set code [catch {gsink_forward $m {a b c} {} 1 3} msg]
check "non-integer tokens raise" {$code == 1} "$msg"
set code [catch {gsink_backward $m 0} msg opt]
check "backward after failed forward raises" {$code == 1 && [lindex [dict get $opt -errorcode] 1] == $GSINK_ERR_CALL_ORDER} "$msg"
# The model is still usable and gives the same loss.
set again [gsink_forward $m $tokens $targets $B $T]
check "usable after errors" {$again == $loss} "$again vs $loss"
set code [catch {gsink_forward $m $tokens {} $B $T} msg]
check "forward without targets" {$code == 0}
set code [catch {gsink_backward $m 0} msg opt]
check "backward without targets raises" {$code == 1 && [lindex [dict get $opt -errorcode] 1] == $GSINK_ERR_NO_TARGETS} "$msg"

# ---- architectures: a Qwen2 checkpoint loads with its architecture and biases
set qdir [file join [file dirname [file normalize [info script]]] .. .. tests data hf-archs qwen2]
set qm [gsink_model_load $qdir $opts]
set qcfg [new_gsink_config]
gsink_config_init $qcfg
gsink_model_config $qm $qcfg
check "qwen2 architecture" {[gsink_arch_name [gsink_config_arch_get $qcfg]] eq "qwen2"}
check "qwen2 q/k/v biases" {[gsink_config_qkv_bias_get $qcfg] == 1}
check "rope scaling name" {[gsink_rope_scaling_name [gsink_config_rope_scaling_get $qcfg]] eq "default"}
check "no sliding window" {[gsink_config_sliding_window_get $qcfg] == 0}
set qd [expr {[gsink_config_n_heads_get $qcfg] * [gsink_config_d_head_get $qcfg]}]
set qb [gsink_get_param $qm model.layers.0.self_attn.q_proj.bias $qd]
check "q bias is a parameter" {[llength $qb] == $qd && [l2 $qb] > 0.0}
gsink_model_free $qm
# GLM-4-0414: sandwich norms, interleaved RoPE on half of each head, fused gate_up_proj
set gm [gsink_model_load [file join [file dirname $qdir] glm4] $opts]
gsink_config_init $qcfg
gsink_model_config $gm $qcfg
check "glm4 architecture" {[gsink_arch_name [gsink_config_arch_get $qcfg]] eq "glm4"}
check "glm4 flags" {[gsink_config_sandwich_norm_get $qcfg] == 1 && [gsink_config_rope_interleaved_get $qcfg] == 1 &&
                    [gsink_config_qk_norm_get $qcfg] == 0 &&
                    [gsink_config_rope_dims_get $qcfg] * 2 == [gsink_config_d_head_get $qcfg]}
set gu [expr {2 * [gsink_config_d_ff_get $qcfg] * [gsink_config_d_model_get $qcfg]}]
check "fused gate_up_proj" {[llength [gsink_get_param $gm model.layers.0.mlp.gate_up_proj.weight $gu]] == $gu}
gsink_model_free $gm
delete_gsink_config $qcfg

# ---- embedding API: the operations and metrics on the model's tensors ------
proc max_diff {a b} {
    if {[llength $a] != [llength $b]} { return 1e30 }
    set m 0.0
    foreach x $a y $b { set m [expr {max($m, abs($x - $y))}] }
    return $m
}
set KV [gsink_config_n_kv_heads_get $cfg]
set DH [gsink_config_d_head_get $cfg]
gsink_forward $m $tokens $targets $B $T ;# the same weights and batch as above
gsink_backward $m 0
set ops [gsink_ops_create NULL]
set ad [new_gsink_attn_desc]
gsink_attn_desc_init $ad
gsink_attn_desc_batch_set $ad $B
gsink_attn_desc_seq_set $ad $T
gsink_attn_desc_n_heads_set $ad $H
gsink_attn_desc_n_kv_heads_set $ad $KV
gsink_attn_desc_n_v_heads_set $ad $KV
gsink_attn_desc_d_head_set $ad $DH
gsink_attn_desc_sink_window_set $ad $win
set nq [expr {$B * $T * $H * $DH}]
set nk [expr {$B * $T * $KV * $DH}]
set q [gsink_get_activation $m 0 $GSINK_SITE_Q $nq]
set k [gsink_get_activation $m 0 $GSINK_SITE_K $nk]
set vsc [gsink_get_activation $m 0 $GSINK_SITE_V_SCALED $nk]
lassign [gsink_ops_attention_forward $ops $ad $q $k $vsc] out lse cmass csq cwin
check "ops attention forward = z" {[max_diff $out [gsink_get_activation $m 0 $GSINK_SITE_Z $nq]] < 1e-6}
check "metric sink scores" {[max_diff [gsink_metric_sink_scores $cwin $B $H $T $win 0] $scores] < 1e-6}
check "metric sink rate" {[gsink_metric_sink_rate $cwin $B $H $T $win 0 0.3] == $rate}
lassign [gsink_ops_attention_backward $ops $ad $q $k $vsc $out $lse [gsink_get_gradient $m 0 $GSINK_SITE_Z $nq]] dq dk dv
check "ops attention backward = dq" {[max_diff $dq [gsink_get_gradient $m 0 $GSINK_SITE_Q $nq]] < 1e-6}
check "ops attention backward = dv" {[max_diff $dv [gsink_get_gradient $m 0 $GSINK_SITE_V_SCALED $nk]] < 1e-6}
set n2 [gsink_metric_token_norms $g $B $T 1 $W $GSINK_ALL_HEADS $GSINK_AGG_SUM_THEN_NORM]
check "metric token norms" {$n2 eq $norms}
check "metric R_GS" {[gsink_metric_gradient_sink_ratio $n2 0 $te] == $rgs}
check "metric t0/early" {[gsink_metric_massive_activation_ratio $an] == $t0}
set vd [new_gsink_vscale_desc]
gsink_vscale_desc_init $vd
gsink_vscale_desc_n_rows_set $vd [expr {$B * $T}]
gsink_vscale_desc_heads_in_set $vd $KV
gsink_vscale_desc_heads_out_set $vd $KV
gsink_vscale_desc_d_head_set $vd $DH
gsink_vscale_desc_d_model_set $vd [gsink_config_d_model_get $cfg]
set theta [lrepeat $KV 0.0]
set vout [gsink_ops_vscale_forward $ops $vd $vsc $theta]
check "ops vscale forward shrinks" {[l2 $vout] < [l2 $vsc]}
lassign [gsink_ops_vscale_backward $ops $vd $vsc $theta $vout [lrepeat $KV 1.0]] vdv vdt
check "ops vscale backward" {[llength $vdv] == $nk && [llength $vdt] == $KV}
set code [catch {gsink_ops_attention_forward $ops $ad [lrange $q 0 5] $k $vsc} msg opt]
check "ops list length refused" {$code == 1 && [lindex [dict get $opt -errorcode] 1] == $GSINK_ERR_SHAPE_MISMATCH} "$msg"
gsink_attn_desc_n_kv_heads_set $ad 3
set code [catch {gsink_ops_attention_forward $ops $ad $q $k $vsc} msg opt]
check "ops bad descriptor refused" {$code == 1 && [lindex [dict get $opt -errorcode] 1] == $GSINK_ERR_INVALID_ARGUMENT} "$msg"
set code [catch {gsink_metric_sink_scores $cwin $B $H $T $win [expr {$T - 1}]} msg opt]
check "metric window refused" {$code == 1 && [lindex [dict get $opt -errorcode] 1] == $GSINK_ERR_OUT_OF_RANGE} "$msg"
gsink_ops_free $ops
delete_gsink_attn_desc $ad
delete_gsink_vscale_desc $vd

# ---- tokenizer.json: models/default's tokenizer
set tdir [file join [file dirname [file normalize [info script]]] .. .. models default]
if {[file exists [file join $tdir tokenizer.json]]} {
    set tk [gsink_tokenizer_load_json $tdir]
    set eot [gsink_tokenizer_token_id $tk "<|endoftext|>"]
    lassign [gsink_tokenizer_special $tk] tbos teos
    check "tokenizer.json eos is <|endoftext|>" {$teos == $eot && $tbos == -1} "$tbos $teos $eot"
    set ids [gsink_tokenizer_encode $tk "Hello world<|endoftext|>" $GSINK_ENCODE_PARSE_SPECIAL]
    check "tokenizer.json encode" {[lindex $ids end] == $eot && [llength $ids] >= 3} "$ids"
    check "tokenizer.json decode" {[gsink_tokenizer_decode $tk $ids] eq "Hello world<|endoftext|>"}
    set code [catch {gsink_tokenizer_token_id $tk "no such token"} msg opt]
    check "token_id of an unknown text" {$code == 1 && [lindex [dict get $opt -errorcode] 1] == $GSINK_ERR_UNKNOWN_NAME} "$msg"
    gsink_tokenizer_free $tk
}

gsink_model_free $m
delete_gsink_config $cfg
delete_gsink_model_options $opts
delete_gsink_diag_options $diag

if {$failures} {
    puts "$failures check(s) failed"
    exit 1
}
puts "all checks passed"
