# analyze.tcl - the Tcl twin of examples/c/analyze.c: creates a model from a
# preset (or loads MODEL_PATH), runs forward + backward on the same fixed batch and prints R_GS,
# sink rate and t0/early per layer (or, with --numbers, the values compared
# across languages by tests/examples/compare_bindings.sh).
# Usage: tclsh analyze.tcl path/to/gsink.so [--numbers] [--preset NAME] [--seed N] [MODEL_PATH]
load [file normalize [lindex $argv 0]] Gsink

set preset micro
set seed 1234
set numbers 0
set path ""
for {set i 1} {$i < [llength $argv]} {incr i} {
    switch -- [lindex $argv $i] {
        --numbers { set numbers 1 }
        --preset { set preset [lindex $argv [incr i]] }
        --seed { set seed [lindex $argv [incr i]] }
        default {
            set a [lindex $argv $i]
            if {[string index $a 0] ne "-"} { set path $a; continue }
            puts stderr "usage: tclsh analyze.tcl MODULE \[--numbers\] \[--preset NAME\] \[--seed N\] \[MODEL_PATH\]"
            exit 2
        }
    }
}

set cfg [new_gsink_config]
gsink_config_init $cfg
set opts [new_gsink_model_options]
gsink_model_options_init $opts
gsink_model_options_seed_set $opts $seed
gsink_model_options_n_threads_set $opts 1 ;# one thread: identical numbers everywhere
if {$path ne ""} {
    set m [gsink_model_load $path $opts]
    gsink_model_config $m $cfg
} else {
    gsink_config_preset $preset $cfg
    set m [gsink_model_create $cfg $opts]
}

set V [gsink_config_vocab_size_get $cfg]
set L [gsink_config_n_layers_get $cfg]
set H [gsink_config_n_heads_get $cfg]
set T [expr {min(64, [gsink_config_max_seq_len_get $cfg])}]
set B 2
set diag [new_gsink_diag_options]
gsink_diag_options_init $diag
gsink_diag_options_sink_window_set $diag [expr {min([gsink_diag_options_sink_window_get $diag], $T)}]
gsink_diag_options_rgs_window_set $diag [expr {min([gsink_diag_options_rgs_window_get $diag], $T - 1)}]
gsink_set_diag_options $m $diag
set te [gsink_diag_options_rgs_window_get $diag]
set eps [gsink_diag_options_sink_eps_get $diag]

set tokens {}
set targets {}
for {set b 0} {$b < $B} {incr b} {
    for {set t 0} {$t < $T} {incr t} {
        lappend tokens [expr {(31 * $b + 7 * $t + 3) % $V}]
        lappend targets [expr {$t + 1 < $T ? (31 * $b + 7 * ($t + 1) + 3) % $V : -1}]
    }
}
set loss [gsink_forward $m $tokens $targets $B $T]
gsink_backward $m 0

if {$numbers} {
    # eps is a float32 in the struct; pass it through unchanged.
    puts [format "loss %.9g" $loss]
    puts [format "rgs_layer0 %.9g" [gsink_gradient_sink_ratio $m 0 0 $te $GSINK_AGG_SUM_THEN_NORM]]
    puts [format "sink_rate_layer0 %.9g" [gsink_sink_rate $m 0 0 $eps]]
    puts [format "sink_score_layer0_head0 %.9g" [lindex [gsink_sink_scores $m 0 0 $H] 0]]
    set gn [gsink_get_gradient_norms $m 0 $GSINK_SITE_ATTN_NORM_OUT $GSINK_ALL_HEADS $GSINK_AGG_SUM_THEN_NORM $T]
    puts [format "grad_norm_layer0_t0 %.9g" [lindex $gn 0]]
    puts [format "t0_early_last %.9g" [gsink_massive_activation_ratio $m [expr {$L - 1}] $GSINK_SITE_RESID_OUT]]
} else {
    puts "libgsink [gsink_version_string], $preset, $L layers, batch $B x $T tokens"
    puts [format "loss %.6f" $loss]
    puts [format "%5s %10s %10s %10s" layer R_GS sink_rate t0/early]
    for {set l 0} {$l < $L} {incr l} {
        set rgs [gsink_gradient_sink_ratio $m $l 0 $te $GSINK_AGG_SUM_THEN_NORM]
        set rate [gsink_sink_rate $m $l 0 $eps]
        set t0 [gsink_massive_activation_ratio $m $l $GSINK_SITE_RESID_OUT]
        puts [format "%5d %10.4f %10.4f %10.4f" $l $rgs $rate $t0]
    }
}
gsink_model_free $m
delete_gsink_config $cfg
delete_gsink_model_options $opts
delete_gsink_diag_options $diag
