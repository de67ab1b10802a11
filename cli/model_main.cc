// lowband-model: the `lowband` commands that need the model (LibTorch):
// check, export, generate and eval. `lowband CMD ...` runs this binary for
// them, so that the other commands start without loading LibTorch.
#include <CLI/CLI.hpp>
#include <cstdio>

#include "cli/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"lowband: the commands that read models (run as `lowband check|export|generate|eval`)"};
  app.name("lowband");
  app.require_subcommand(1);
  lowband::cli::CheckOptions check_opts;
  auto* check_cmd = app.add_subcommand("check", "validate a campaign and its site files without starting anything, "
                                                "and print parameters, bytes per round and transfer times");
  check_cmd->add_option("campaign", check_opts.campaign_file, "the campaign file")->required();
  check_cmd->add_option("--set", check_opts.sets, "KEY=VALUE override of the campaign file (repeatable)");
  check_cmd->add_option("--link-mbit", check_opts.link_mbit, "the link to time the transfers on (default 100)")
      ->check(CLI::PositiveNumber);
  lowband::cli::GenerateOptions gen;
  auto* gen_cmd = app.add_subcommand("generate", "sample text from a model (run directory, checkpoint or Hugging "
                                                 "Face directory) with a key/value cache");
  gen_cmd->add_option("model", gen.model, "a run directory, a .lbck checkpoint or a Hugging Face directory")
      ->required();
  gen_cmd->add_option("--prompt,-p", gen.prompt, "the text to continue");
  gen_cmd->add_option("--max-tokens,-n", gen.max_tokens, "tokens to generate (default 200)")->check(CLI::Range(1, 1 << 20));
  gen_cmd->add_option("--temperature,-t", gen.temperature, "sampling temperature; 0: greedy (default 0.8)")
      ->check(CLI::Range(0.0, 100.0));
  gen_cmd->add_option("--top-k,-k", gen.top_k, "sample among the k most likely tokens; 0: all (default 40)")
      ->check(CLI::Range(0, 1 << 20));
  gen_cmd->add_option("--seed", gen.seed, "sampling seed (default 1)");
  gen_cmd->add_option("--device", gen.device, "cpu (default), cuda or cuda:N");
  lowband::cli::EvalOptions ev;
  auto* eval_cmd = app.add_subcommand("eval", "loss, perplexity, bits per byte and tokens/s of a model on text");
  eval_cmd->add_option("model", ev.model, "a run directory, a .lbck checkpoint or a Hugging Face directory")
      ->required();
  eval_cmd->add_option("--data", ev.data_dir, "a directory of text files")->required();
  eval_cmd->add_option("--files", ev.files, "the files in it to read (default: every text file)");
  eval_cmd->add_option("--validation-fraction", ev.validation_fraction,
                       "the split evaluated: the last fraction of each file's records (default 0.1, as campaigns)")
      ->check(CLI::Range(0.001, 0.999));
  eval_cmd->add_flag("--all", ev.all, "evaluate every record, not the validation split");
  eval_cmd->add_option("--batch", ev.batch, "sequences per forward pass (default 16)")->check(CLI::Range(1, 65536));
  eval_cmd->add_option("--device", ev.device, "cpu (default), cuda or cuda:N");
  lowband::cli::ExportOptions export_opts;
  auto* export_cmd = app.add_subcommand("export", "write a campaign's model as a Hugging Face directory "
                                                  "(model.safetensors + config.json: GPT2LMHeadModel or "
                                                  "LlamaForCausalLM)");
  export_cmd->add_option("source", export_opts.source, "a run directory or a .lbck checkpoint")->required();
  export_cmd->add_option("--out,-o", export_opts.out_dir, "the directory to write")->required();
  export_cmd->add_option("--campaign", export_opts.campaign_file,
                         "the campaign file (default: the run directory's campaign.yaml)");
  export_cmd->add_option("--dtype", export_opts.dtype, "f32 (default) or bf16")
      ->check(CLI::IsMember({"f32", "bf16"}));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 64;
  }
  if (export_cmd->parsed()) return lowband::cli::Export(export_opts);
  if (check_cmd->parsed()) return lowband::cli::Check(check_opts);
  if (gen_cmd->parsed()) return lowband::cli::Generate(gen);
  if (eval_cmd->parsed()) return lowband::cli::Eval(ev);
  return 64;
}
